"""The app protocol (sweep/apps.py) is the whole seam: an app that is not hexsweep.train gets
failure records, pausing at a Ctrl-C and resuming in the same trial by implementing it, with
no hexsweep.train code involved. The app is written to tmp_path and run as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from omegaconf import OmegaConf

from hexsweep.search.storage import open_storage

pytestmark = pytest.mark.slow

APP = '''
import json, os, signal, time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus

from hexsweep.sweep.apps import JobApp, Verdict, job_app


class CountingApp(JobApp):
    """Its jobs count steps, keep their state in state.json and their verdict in record.json."""

    def settle(self, cfg, job_dir, death, force=False):
        record = job_dir / "record.json"
        if death is not None:
            record.write_text(json.dumps({"status": "died", "how": death[1]}))
        return json.loads(record.read_text()) if record.exists() else None

    def hydra_return(self, ret, record):
        ret.status, ret.return_value = JobStatus.COMPLETED, (record or {}).get("value")

    def verdict(self, ret, job_dir, n_objectives=1, metrics=None):
        record = json.loads((job_dir / "record.json").read_text())
        if record["status"] == "done":
            return Verdict("completed", [record["value"]])
        return Verdict("failed", status=record["status"], reason=record.get("how"))

    def pauses(self, outcome):
        return (outcome.record or {}).get("status") == "stopped" and self.can_continue(outcome.job_dir)

    def can_continue(self, job_dir):
        return (job_dir / "state.json").exists()

    def resume_overrides(self):
        return ["resume=true"]


@hydra.main(config_path="conf", config_name="count", version_base="1.3")
@job_app(CountingApp())
def count(cfg):
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    state = job_dir / "state.json"
    start = json.loads(state.read_text())["step"] if cfg.resume and state.exists() else 0
    if cfg.die:
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        for step in range(start, cfg.steps):
            time.sleep(cfg.sleep_s)
            state.write_text(json.dumps({"step": step + 1}))
    except KeyboardInterrupt:  # the driver's interrupt: the state is saved, say so
        (job_dir / "record.json").write_text(json.dumps({"status": "stopped"}))
        return None
    record = {"status": "done", "value": cfg.x ** 2, "started_from": start}
    (job_dir / "record.json").write_text(json.dumps(record))
    return record["value"]


if __name__ == "__main__":
    count()
'''

CONFIG = {"defaults": [{"override hydra/sweeper": "hexsweep_optuna"}, {"override hydra/launcher": "hexsweep"},
                       "_self_"],
          "x": 1.0, "steps": 3, "sleep_s": 0.0, "die": False, "resume": False,
          "hydra": {"sweeper": {"n_trials": 2, "n_jobs": 1, "params": {"x": "interval(-1, 1)"}},
                    "launcher": {"progress": "off"}}}


def command(tmp_path, *args: str) -> list[str]:
    (tmp_path / "conf").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(CONFIG), tmp_path / "conf" / "count.yaml")
    (tmp_path / "count.py").write_text(textwrap.dedent(APP))
    return [sys.executable, "count.py", "-m", "hydra/sweeper/sampler=random", "hydra.sweep.dir=sweep", *args]


def trials(tmp_path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(str(tmp_path / "outputs/optuna/studies.journal"))
    return optuna.load_study(study_name="hexsweep", storage=storage).trials


def test_a_dead_job_is_settled_by_its_app_and_its_trial_fails_with_the_apps_reason(tmp_path):
    out = subprocess.run(command(tmp_path, "die=true", "hydra.sweeper.max_failure_rate=1.0"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("hexsweep: error: no trial of this search completed")
    for t in trials(tmp_path):
        assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["fail_status"] == "died"
        assert "killed by SIGKILL" in t.user_attrs["fail_reason"]
        assert json.loads((tmp_path / "sweep" / str(t.number) / "record.json").read_text())["status"] == "died"


def test_an_interrupted_job_pauses_its_trial_and_a_resume_continues_it_in_the_same_trial(tmp_path):
    cmd = command(tmp_path, "hydra.sweeper.n_trials=1", "steps=60", "sleep_s=0.05")
    driver = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = tmp_path / "sweep" / "0" / "state.json"
    try:
        deadline = time.monotonic() + 60
        while not (state.exists() and state.read_text() and json.loads(state.read_text())["step"] >= 3):
            assert time.monotonic() < deadline and driver.poll() is None, "the job never got going"
            time.sleep(0.1)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, err
    [paused] = trials(tmp_path)
    assert paused.state == optuna.trial.TrialState.RUNNING and paused.user_attrs["paused"] is True
    stopped_at = json.loads(state.read_text())["step"]

    # the paused trial restarts with the overrides it started with, plus the app's resume overrides
    out = subprocess.run([*cmd, "resume=true"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [done] = trials(tmp_path)
    record = json.loads((tmp_path / "sweep" / "0" / "record.json").read_text())
    assert done.number == paused.number and done.state == optuna.trial.TrialState.COMPLETE
    assert record["status"] == "done" and record["started_from"] == stopped_at >= 3
    assert done.value == pytest.approx(done.params["x"] ** 2)


BAD_LAUNCHER_VALUES = {"n_jobs": 0, "timeout_s": -1, "stall_timeout_s": float("inf"), "kill_grace_s": -1,
                       "slots_per_gpu": 0, "progress": "loud", "progress_interval_s": 0}


@pytest.mark.parametrize("key", sorted(BAD_LAUNCHER_VALUES))
def test_every_launcher_value_has_one_check_shared_by_list_launches_and_searches(key):
    """``check_params`` is what ``-m`` and the Optuna sweeper both call (through the launcher's
    ``check``/``n_jobs_for``: the subprocess test in test_optuna_any_app.py runs both paths); each
    value the launcher's schema has beyond its type is checked there."""
    from dataclasses import fields

    from hexsweep.errors import ConfigError
    from hexsweep.sweep.launcher import check_params
    from hydra_plugins.hexsweep_launcher.launcher import HexsweepLauncherConf

    typed_only = {"_target_", "slots_dir", "resume"}  # OmegaConf's type check is all they need
    assert {f.name for f in fields(HexsweepLauncherConf)} - typed_only == set(BAD_LAUNCHER_VALUES)
    with pytest.raises(ConfigError, match=rf"^hydra\.launcher\.{key}=.* is invalid: allowed "):
        check_params({key: BAD_LAUNCHER_VALUES[key]})
