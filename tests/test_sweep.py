"""Real multi-process sweeps through the hexsweep launcher (tiny data, seconds each)."""

import os
import signal

import matplotlib.image as mpimg
import pandas as pd
import pytest
from sweep_helpers import (
    read_result,
    run_one_failing_sweep,
    run_sweep,
    running_with_slot,
    sweep_cmd,
    sweep_dirs,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def data(data_root, tiny_dataset):
    return data_root


def test_raising_and_killed_jobs_do_not_stop_the_sweep(tmp_path, data, spawn):
    """4 jobs on 2 slots: job 0 and 1 raise, job 3 is kill -9'ed while training; job 2 completes.
    The sweep still runs every job, aggregates, reports and exits 1 with a one-line summary."""
    proc = spawn(sweep_cmd(tmp_path, data, "fault.raise_at_epoch=1,null", "fault.sleep_s_per_epoch=0,4",
                           "hydra.launcher.n_jobs=2"))
    victim = wait_for(lambda: running_with_slot(tmp_path, "3"), timeout=180)
    os.kill(victim["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    summary_line = [ln for ln in err.splitlines() if ln.startswith("hexsweep: ")]
    assert len(summary_line) == 1
    assert summary_line[0].startswith("hexsweep: 3 of 4 jobs failed: 0 (")
    assert "crashed" in summary_line[0]
    sweep = sweep_dirs(tmp_path)[0]
    df = pd.read_csv(sweep / "results.csv")
    by_job = df.set_index("job_num")
    assert by_job.loc[0, "status"] == "failed" and by_job.loc[1, "status"] == "failed"
    assert by_job.loc[2, "status"] == "completed" and by_job.loc[3, "status"] == "crashed"
    assert "SIGKILL" in by_job.loc[3, "error"]
    assert by_job.loc[2, "objective"] > 0 and by_job.loc[2, "epochs_run"] == 2
    assert "InjectedFault" in (sweep / "0" / "error.txt").read_text()
    assert "Traceback" in (sweep / "0" / "error.txt").read_text()
    # the parallel CPU jobs split the 2 cores between them
    assert set(df["num_threads"].dropna()) == {max(1, os.cpu_count() // 2)}
    assert len(pd.read_parquet(sweep / "results.parquet")) == 4
    # each override becomes a column; the same experiment is told apart by its overrides
    as_text = pd.read_csv(sweep / "results.csv", dtype=str, keep_default_na=False)
    assert set(as_text["ov.fault.raise_at_epoch"]) == {"1", "null"}
    report = (sweep / "report.md").read_text()
    assert "Jobs that did not complete" in report and "killed by SIGKILL" in report
    for png in ("curves.png", "by_experiment.png", "accuracy_vs_value_loss.png"):
        image = mpimg.imread(sweep / png)
        assert image.shape[0] > 100 and image.std() > 0  # a real picture, not a blank file


def test_interrupt_then_resume_runs_only_unfinished_jobs(tmp_path, data, spawn):
    overrides = ["fault.sleep_s_per_epoch=0,3", "seed=0,1", "hydra.launcher.n_jobs=2"]
    proc = spawn(sweep_cmd(tmp_path, data, *overrides))
    def fast_jobs_done_slow_one_running():
        if not running_with_slot(tmp_path, "2"):
            return False
        sweep = sweep_dirs(tmp_path)[0]
        return all((read_result(sweep / j) or {}).get("status") == "completed" for j in ("0", "1"))

    wait_for(fast_jobs_done_slow_one_running, timeout=180)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    sweep = sweep_dirs(tmp_path)[0]
    first = {j: read_result(sweep / j) for j in ("0", "1", "2")}
    assert first["0"]["status"] == "completed" and first["1"]["status"] == "completed"
    assert first["2"]["status"] == "interrupted"
    assert f"hydra.sweep.dir={sweep} resume=true" in err
    again = run_sweep(tmp_path, data, *overrides, f"hydra.sweep.dir={sweep}", "resume=true")
    assert again.returncode == 0, again.stderr
    for j in ("0", "1"):  # untouched
        assert read_result(sweep / j)["finished_at"] == first[j]["finished_at"]
    assert all(read_result(sweep / j)["status"] == "completed" for j in ("2", "3"))
    summary = pd.read_csv(sweep / "results.csv")
    assert len(summary) == 4 and set(summary["status"]) == {"completed"}
    assert "already completed, skipped" not in again.stderr  # progress is off; the log says it
    assert len(sweep_dirs(tmp_path)) == 1


def test_same_second_sweeps_get_their_own_folders(tmp_path, data, spawn):
    cmd = sweep_cmd(tmp_path, data, "trainer.epochs=0", "strength.games=0", "seed=0,1")
    procs = [spawn(cmd) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    dirs = sweep_dirs(tmp_path)
    assert len(dirs) == 2
    for d in dirs:
        assert sorted(p.name for p in d.iterdir() if p.is_dir()) == ["0", "1"]
        assert len(pd.read_csv(d / "results.csv")) == 2


def test_a_bad_value_stops_the_sweep_before_any_job(tmp_path, data):
    out = run_sweep(tmp_path, data, "batch_size=8,0")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == "hexsweep: error: job 1 (batch_size=0): batch_size=0 is invalid: allowed an integer > 0"
    assert not list((tmp_path / "multirun").glob("*/*/*/result.json"))


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_other_hydra_launchers_keep_folders_slots_and_report(tmp_path, data, launcher):
    """Hydra's own launchers: a raising job is recorded, the rest run, the callback reports."""
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    _, df = run_one_failing_sweep(tmp_path, data, launcher, *extra)
    assert str(df.loc[1, "slot"]).startswith("cpu-")
    expected_threads = max(1, os.cpu_count() // 2) if launcher == "joblib" else os.cpu_count()
    assert df.loc[1, "num_threads"] == expected_threads
