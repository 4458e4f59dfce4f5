"""One Optuna study shared by two sweep drivers through a real PostgreSQL server on loopback."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from postgres import Postgres, available
from sweep_helpers import console_script, sweep_cmd, sweep_dirs

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.xdist_group("postgres"),  # one server at a time, on one xdist worker
              pytest.mark.skipif(not available(), reason="PostgreSQL binaries (initdb, pg_ctl) not installed")]


@pytest.fixture(scope="module")
def pg_url():
    # not under pytest's tmp_path: that is private to root, and the server runs as 'postgres'
    root = Path(tempfile.mkdtemp(prefix="hexsweep-pg-"))
    server = Postgres(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def driver(outputs, data, url, study, n_trials, *extra):
    return sweep_cmd(outputs, data, "hydra/sweeper=hexsweep_optuna", f"hydra.sweeper.storage={url}",
                     f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={n_trials}",
                     "hydra.sweeper.n_jobs=1",
                     "resume=true", "trainer.epochs=3", "optim.lr=tag(log,interval(1e-4,1e-2))",
                     "hydra.sweeper.pruner.name=median", "hydra.sweeper.pruner.n_startup_trials=2",
                     "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4", *extra)


def test_two_drivers_share_one_study(tmp_path, data_root, tiny_dataset, pg_url, spawn):
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [spawn(driver(o, data_root, pg_url, "shared", 4)) for o in (a, b)]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=pg_url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) >= 4
    hosts_dirs = {str(sweep_dirs(a)[0]), str(sweep_dirs(b)[0])}
    assert {os.path.dirname(t.user_attrs["job_dir"]) for t in study.trials} == hosts_dirs  # both drivers ran trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    for t in study.trials:  # job folders agree with the shared storage
        r = json.loads((Path(t.user_attrs["job_dir"]) / "result.json").read_text())
        assert r["optuna"]["trial_number"] == t.number
        assert "hunter" not in json.dumps(r)
    cli = subprocess.run([console_script("optuna"), "trials", "--study-name", "shared", "--storage", pg_url,
                          "-f", "json"], capture_output=True, text=True)
    assert cli.returncode == 0 and len(json.loads(cli.stdout)) == len(numbers)
    listed = subprocess.run([sys.executable, "-m", "hexsweep.study", "--storage", pg_url, "list"],
                            capture_output=True, text=True)
    assert listed.stdout.startswith(f"shared: {len(numbers)} trials")
    merged = subprocess.run([sys.executable, "-m", "hexsweep.analyze", *hosts_dirs, "--out", str(tmp_path / "m")],
                            capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert len(pd.read_csv(tmp_path / "m" / "results.csv")) == len(numbers)


def test_a_killed_driver_leaves_its_trials_to_the_heartbeat(tmp_path, data_root, tiny_dataset, pg_url, spawn):
    a, b = tmp_path / "a", tmp_path / "b"
    slow = ["fault.sleep_s_per_epoch=3"]
    victim = spawn(driver(a, data_root, pg_url, "killed", 4, *slow))
    storage = optuna.storages.RDBStorage(pg_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            running = optuna.load_study(study_name="killed", storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            running = []
        if running:
            break
        time.sleep(0.5)
    assert running, "the first driver never started a trial"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    survivor = subprocess.run(driver(b, data_root, pg_url, "killed", 4), capture_output=True, text=True, timeout=400)
    assert survivor.returncode == 0, survivor.stderr
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    orphan = trials[running[0].number]
    assert orphan.state == TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) >= 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_one_drivers_trials_are_pruned_against_the_others(tmp_path, data_root, tiny_dataset, pg_url):
    """Pruning across machines: driver A completes the one good trial; driver B, with its own
    sweep folder, joins the study and its hopeless trials are stopped by the median of A's."""
    a, b = tmp_path / "a", tmp_path / "b"
    grid = ["hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=5",  # seed 5: the good lr first
            "optim.lr=choice(3e-3,1e-7,2e-7,3e-7)", "trainer.epochs=5", "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.pruner.n_warmup_steps=1"]
    first = subprocess.run(driver(a, data_root, pg_url, "across", 1, *grid), capture_output=True, text=True,
                           timeout=400)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(driver(b, data_root, pg_url, "across", 4, *grid), capture_output=True, text=True,
                            timeout=400)
    assert second.returncode == 0, second.stderr
    trials = optuna.load_study(study_name="across", storage=pg_url).trials
    assert trials[0].params["optim.lr"] == 3e-3 and trials[0].state == TrialState.COMPLETE
    assert str(sweep_dirs(a)[0]) in trials[0].user_attrs["job_dir"]
    from_b = [t for t in trials if str(sweep_dirs(b)[0]) in t.user_attrs["job_dir"]]
    assert len(from_b) == 3
    assert all(t.state == TrialState.PRUNED for t in from_b), [(t.number, t.state) for t in from_b]


@pytest.mark.parametrize("how", ["url", "env"])
def test_the_storage_password_lands_in_no_file(tmp_path, data_root, tiny_dataset, pg_url, how):
    """The password of an RDB URL reaches the jobs through the environment only: no file under
    the outputs root (multirun.yaml, sweep.json, every job's .hydra/, result.json, logs,
    reports) and no line of output holds it. The server trusts loopback, so any password works."""
    secret = "S3CRETPW"
    url = pg_url.replace("hex@", f"hex:{secret}@")
    storage = url if how == "url" else "${oc.env:HEXSWEEP_TEST_STORAGE}"
    env = {**os.environ, "HEXSWEEP_TEST_STORAGE": url}
    cmd = [c for c in driver(tmp_path, data_root, storage, f"secret_{how}", 1) if not c.startswith("resume=")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert secret not in out.stdout + out.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "hydra.yaml" for p in files) and any(p.name == "multirun.yaml" for p in files)
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaks
    study = optuna.load_study(study_name=f"secret_{how}", storage=url)
    assert len(study.trials) == 1 and study.trials[0].intermediate_values  # the job did reach the storage
