"""Sweeps through Ray, against a real Ray head started on loopback for this module.

The head is ``ray start --head --block`` (terminated with SIGTERM at the end, which stops its
raylet and workers); the drivers find it the way users do: ``address=auto`` and RAY_ADDRESS.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from sweep_helpers import read_result, sweep_cmd, sweep_dirs, wait_for

from hexsweep.errors import ConfigError
from hexsweep.naming import host
from hexsweep.search.storage import open_storage

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install -e '.[ray]'")
pytestmark = [pytest.mark.slow, pytest.mark.ray,
              pytest.mark.xdist_group("ray")]  # one Ray head at a time, on one xdist worker

CPU_CLUSTER = ["hydra/launcher=ray_cluster", "hydra.launcher.ray.remote.num_gpus=0",
               "hydra.launcher.ray.remote.num_cpus=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    # a short temp dir: Ray puts unix sockets under it (108-byte path limit)
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    log = (temp / "head.log").open("w")
    head = subprocess.Popen([str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", "--block",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                             "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=200000000",
                             f"--temp-dir={temp}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp)
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: "Ray runtime started" in (temp / "head.log").read_text() or head.poll() is not None, 90)
        assert head.poll() is None, (temp / "head.log").read_text()
        yield os.environ["RAY_ADDRESS"]
    finally:
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_sweep_records_a_failing_job_and_packs_the_node(tmp_path, data_root, tiny_dataset, ray_head):
    """Jobs run as Ray tasks in workers started in the head's directory, yet a relative
    ``paths.outputs`` means the driver's folder; the raising job is recorded and aggregated;
    each task's 1 assigned CPU makes a 2-slot pool of 1-thread jobs on this 2-core node."""
    cmd = [c for c in sweep_cmd(Path("out"), data_root, *CPU_CLUSTER, "fault.raise_at_epoch=1,99")
           if c != "hydra.launcher.progress=off"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "hexsweep: 1 of 2 jobs failed: 0 (fault.raise_at_epoch=1): failed: InjectedFault" in out.stderr
    sweep = sweep_dirs(tmp_path / "out")[0]
    df = pd.read_csv(sweep / "results.csv").set_index("job_num")
    assert df.loc[0, "status"] == "failed" and df.loc[1, "status"] == "completed"
    assert "InjectedFault" in (sweep / "0" / "error.txt").read_text()
    assert df.loc[1, "num_threads"] == 1 and df.loc[1, "slot"] in ("cpu-0", "cpu-1")
    assert df.loc[1, "host"] == socket.gethostname()
    record = read_result(sweep / "1")
    assert record["pid"] != os.getpid()
    assert record["config"]["resources"]["lock_dir"] == f"out/.locks/{host()}"
    assert (tmp_path / "out" / ".locks" / host() / "cpu-0.lock").is_file()  # relative to the driver's cwd


def test_the_stock_ray_launcher_joins_a_running_cluster(tmp_path, data_root, tiny_dataset, ray_head):
    """The plain hydra-ray-launcher with address=auto: Ray refuses its forced object_store_memory
    for an existing cluster unless hexsweep nulls it first."""
    cmd = [c for c in sweep_cmd(tmp_path, data_root, "hydra/launcher=ray", "hydra.launcher.ray.init.address=auto",
                                "seed=1,2") if c != "hydra.launcher.progress=off"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_csv(sweep_dirs(tmp_path)[0] / "results.csv")
    assert sorted(df["status"]) == ["completed", "completed"]


def test_a_killed_ray_worker_is_recorded_crashed(tmp_path, data_root, tiny_dataset, ray_head, spawn):
    cmd = [c for c in sweep_cmd(tmp_path, data_root, *CPU_CLUSTER, "fault.sleep_s_per_epoch=2", "seed=1,2")
           if c != "hydra.launcher.progress=off"]
    proc = spawn(cmd)

    def victim():
        dirs = sweep_dirs(tmp_path)
        r = read_result(dirs[0] / "0") if dirs else None
        return r if r and r.get("status") == "running" and r.get("slot") else None

    os.kill(wait_for(victim, 120)["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "hexsweep: 1 of 2 jobs failed: 0 (seed=1): crashed" in err
    df = pd.read_csv(sweep_dirs(tmp_path)[0] / "results.csv").set_index("job_num")
    assert df.loc[0, "status"] == "crashed" and df.loc[1, "status"] == "completed"
    assert "WorkerCrashedError" in (sweep_dirs(tmp_path)[0] / "0" / "error.txt").read_text()


def test_optuna_trials_on_ray_report_epochs_and_get_pruned(tmp_path, data_root, tiny_dataset, ray_head):
    """The storage reaches Ray tasks through runtime_env (workers do not inherit the driver's
    environment): trials report every epoch and the median pruner stops hopeless ones."""
    cmd = [c for c in sweep_cmd(tmp_path, data_root, *CPU_CLUSTER, "hydra/sweeper=hexsweep_optuna",
                                "hydra.sweeper.study_name=r", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_jobs=1",
                                "hydra.sweeper.sampler.seed=5",  # grid order: the good lr first
                                "trainer.epochs=4", "optim.lr=choice(3e-3,1e-7,2e-7)", "hydra.sweeper.n_trials=3",
                                "hydra.sweeper.pruner.name=median", "hydra.sweeper.pruner.n_startup_trials=1",
                                "hydra.sweeper.pruner.n_warmup_steps=1")
           if c != "hydra.launcher.progress=off"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="r", storage=open_storage(str(tmp_path / "optuna/studies.journal")))
    assert all(t.intermediate_values for t in study.trials)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.params) for t in study.trials]
    job = json.loads((Path(pruned[0].user_attrs["job_dir"]) / "result.json").read_text())
    assert job["status"] == "pruned" and job["pruned_at_epoch"] < 4


def test_bad_values_stop_a_ray_sweep_before_it_reaches_the_cluster(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens: reaching it would hang or fail
    cmd = [c for c in sweep_cmd(tmp_path, data_root, *CPU_CLUSTER, "batch_size=512,0")
           if c != "hydra.launcher.progress=off"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == \
        "hexsweep: error: job 1 (batch_size=0): batch_size=0 is invalid: allowed an integer > 0"


def test_ray_options_carry_the_storage_and_join_an_existing_cluster(monkeypatch):
    from omegaconf import OmegaConf

    from hexsweep.sweep.ray_options import concurrent_tasks, init_options, remote_options

    for key in [k for k in os.environ if k.startswith("HEXSWEEP_") or k == "RAY_ADDRESS"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HEXSWEEP_OPTUNA_STORAGE", "postgresql://u:secret@db/x")
    monkeypatch.setenv("HEXSWEEP_PARALLEL_JOBS", "8")  # this machine's, not the nodes'
    remote = remote_options(OmegaConf.create({"num_gpus": 1, "runtime_env": {"env_vars": {"A": "1"}}}))
    assert remote.runtime_env.env_vars == {"HEXSWEEP_OPTUNA_STORAGE": "postgresql://u:secret@db/x", "A": "1"}
    assert init_options(OmegaConf.create({"address": "auto"})) == {"address": "auto", "object_store_memory": None}
    assert "object_store_memory" not in init_options(OmegaConf.create({"address": None}))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # joining through the environment only
    assert init_options(OmegaConf.create({"address": None})).object_store_memory is None

    def node(cpu, gpu=0.0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpu, "GPU": gpu}}

    assert concurrent_tasks([node(16, 2), node(16, 2), node(64, 8, alive=False)], remote, 10) == 4
    assert concurrent_tasks([node(2)], OmegaConf.create({"num_cpus": None, "num_gpus": 0}), 10) == 2
    with pytest.raises(ConfigError, match=r"^hydra.launcher.ray.remote.num_gpus=1 is more than any Ray node "
                                          r"has: allowed at most 0 \(the largest node's GPU\)$"):
        concurrent_tasks([node(2)], OmegaConf.create({"num_cpus": 1, "num_gpus": 1}), 10)
    with pytest.raises(ConfigError, match="no Ray node has num_cpus=8, num_gpus=1 at once"):
        concurrent_tasks([node(8), node(2, 1)], OmegaConf.create({"num_cpus": 8, "num_gpus": 1}), 10)


def test_ray_cluster_sizes_optuna_batches_from_the_cluster(ray_head):
    import ray
    from omegaconf import OmegaConf

    from hydra_plugins.hexsweep_launcher.ray_launcher import HexsweepRayLauncher

    launcher = HexsweepRayLauncher(ray=OmegaConf.create({"init": {"address": "auto"},
                                                         "remote": {"num_cpus": 1, "num_gpus": 0}}))
    try:
        assert launcher.n_jobs_for(8) == 2  # the head's 2 CPUs, 1 a task
    finally:
        ray.shutdown()


PLAIN_APP = '''
import os
import signal

import hydra

@hydra.main(config_path=".", config_name="plain", version_base="1.3")
def sphere(cfg):
    if cfg.x == 2:
        raise RuntimeError("too far out")
    if cfg.x == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # Ray loses the task: its launcher settles it
    return cfg.x ** 2

if __name__ == "__main__":
    sphere()
'''


def test_a_plain_app_searched_through_ray_gets_no_hexsweep_file(tmp_path, ray_head):
    """hexsweep's Ray launcher and Optuna sweeper on an app that is not hexsweep.train: its job
    folders hold Hydra's files and its log only, also for the trial that raised and the one whose
    worker died (which the launcher settles through the app: nothing to write for a plain app)."""
    (tmp_path / "plain.py").write_text(PLAIN_APP)
    (tmp_path / "plain.yaml").write_text(
        "defaults:\n  - override hydra/sweeper: hexsweep_optuna\n  - override hydra/launcher: ray\n  - _self_\n"
        "x: 0\n")
    out = subprocess.run(
        [sys.executable, "plain.py", "-m", "hydra.sweep.dir=sweep", "hydra/sweeper/sampler=grid",
         "hydra.launcher._target_=hydra_plugins.hexsweep_launcher.ray_launcher.HexsweepRayLauncher",
         "hydra.launcher.ray.init.address=auto", "+hydra.launcher.ray.remote.num_cpus=1",
         "+hydra.launcher.ray.remote.num_gpus=0", "+hydra.launcher.ray.remote.max_retries=0",
         "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=1.0", "x=choice(1,2,5)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="hexsweep",
                              storage=open_storage(str(tmp_path / "outputs/optuna/studies.journal")))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL", "FAIL"]
    jobs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(jobs) == 3
    for job in jobs:
        assert {p.name for p in job.iterdir()} <= {".hydra", "plain.log"}, sorted(p.name for p in job.iterdir())
