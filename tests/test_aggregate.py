"""Aggregation of job folders, including broken ones, and OOM handling of a job."""

import json
import subprocess
import sys

import pandas as pd

from hexsweep.lifecycle import train_job_recorded
from hexsweep.report.aggregate import aggregate
from hexsweep.report.files import write_report


def _result(status, objective, overrides, **extra):
    return {"status": status, "experiment": "balanced_weights", "overrides": overrides,
            "objective": {"metric": "val_objective", "direction": "minimize", "value": objective},
            "best": {"val_objective": objective, "val_policy_acc": 0.4, "val_value_loss": 0.9},
            "final": {"val_objective": objective}, "epochs_run": 3, "best_epoch": 2, "peak_rss_mb": 300.0,
            **extra}


def make_sweep(root):
    root.mkdir(parents=True, exist_ok=True)
    jobs = {
        "0": _result("completed", 1.2, ["seed=0", "experiment=balanced_weights"]),
        "1": _result("completed", 1.0, ["seed=1", "experiment=balanced_weights"]),
        "3": _result("running", None, ["seed=3"], pid=2**22 + 12345, host=__import__("socket").gethostname()),
        "5": _result("completed", 1.1, ["seed=0", "experiment=balanced_weights", "batch_size=64"]),
        # jobs that ended badly: they are rows too, with their error (the report's failure list)
        "7": _result("failed", float("nan"), ["seed=7"], error={"type": "InjectedFault", "message": "epoch 1"}),
        "8": _result("oom", None, ["seed=8"], error={"type": "OutOfMemoryError", "message": "CUDA out of memory"}),
        "9": _result("stalled", None, ["seed=9"], error={"type": "Stalled", "message": "made no progress for 900 s"}),
    }
    for name, r in jobs.items():
        (root / name).mkdir()
        (root / name / "result.json").write_text(json.dumps(r))
        (root / name / "metrics.jsonl").write_text(
            json.dumps({"epoch": 1, "val_objective": 1.5}) + "\n" + '{"epoch": 2, "val_obj')  # torn line
    (root / "2").mkdir()
    (root / "2" / "result.json").write_text('{"status": "compl')  # half-written
    (root / "4" / ".hydra").mkdir(parents=True)
    (root / "4" / ".hydra" / "overrides.yaml").write_text("- seed=4\n")
    (root / "sweep.json").write_text(json.dumps({"jobs": {"6": {"overrides": ["seed=6"], "dir": "6"}}}))
    return root


def test_broken_and_missing_job_folders_become_rows(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    df = aggregate([sweep]).set_index("job_num")
    assert df.loc[0, "status"] == "completed" and df.loc[1, "objective"] == 1.0
    assert df.loc[2, "status"] == "corrupt" and "result.json is unreadable" in df.loc[2, "error"]
    assert df.loc[4, "status"] == "missing"
    assert df.loc[4, "ov.seed"] == "4"
    assert df.loc[3, "status"] == "crashed"  # running, but its process is gone
    assert df.loc[6, "status"] == "not_started"
    assert (df.loc[7, "status"], df.loc[8, "status"], df.loc[9, "status"]) == ("failed", "oom", "stalled")
    assert "InjectedFault" in df.loc[7, "error"] and "made no progress" in df.loc[9, "error"]
    # same experiment name, other overrides: separate rows and groups
    summary = write_report(aggregate([sweep]), sweep, [sweep])
    assert summary["best"]["job_num"] == 1
    assert summary["by_status"] == {"completed": 3, "corrupt": 1, "missing": 1, "crashed": 1, "not_started": 1,
                                    "failed": 1, "oom": 1, "stalled": 1}
    assert {f["job_num"]: f["status"] for f in summary["failed"]} == {
        2: "corrupt", 3: "crashed", 4: "missing", 6: "not_started", 7: "failed", 8: "oom", 9: "stalled"}
    groups = summary["groups"]
    assert groups["experiment=balanced_weights"]["n"] == 2
    assert groups["experiment=balanced_weights"]["mean"] == 1.1
    assert groups["batch_size=64 experiment=balanced_weights"]["n"] == 1
    # the Parquet table, read back, against what the job folders hold (not against itself)
    back = pd.read_parquet(sweep / "results.parquet").set_index("job_num")
    assert back["status"].to_dict() == {0: "completed", 1: "completed", 2: "corrupt", 3: "crashed", 4: "missing",
                                        5: "completed", 6: "not_started", 7: "failed", 8: "oom", 9: "stalled"}
    assert back["objective"].dropna().to_dict() == {0: 1.2, 1: 1.0, 5: 1.1}
    assert back.loc[8, "error"] == df.loc[8, "error"] and "CUDA out of memory" in back.loc[8, "error"]
    assert back.loc[5, "ov.batch_size"] == "64" and back.loc[0, "ov.seed"] == "0"
    assert json.loads((sweep / "summary.json").read_text())["total"] == 10


def test_the_curves_plot_shows_the_best_jobs_of_a_maximized_objective(tmp_path, monkeypatch):
    import hexsweep.report.files as files

    sweep = tmp_path / "sweep"
    for num, acc in enumerate([0.2, 0.9, 0.5, 0.7]):
        r = _result("completed", acc, [f"seed={num}"])
        r["objective"].update(metric="val_policy_acc", direction="maximize")
        (sweep / str(num)).mkdir(parents=True)
        (sweep / str(num) / "result.json").write_text(json.dumps(r))
        (sweep / str(num) / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_policy_acc": acc}) + "\n")
    drawn = {}
    monkeypatch.setattr(files, "plot_curves", lambda df, curves, *a: drawn.update(curves) or False)
    write_report(aggregate([sweep]), sweep, [sweep], max_curves=2)
    assert sorted(drawn) == [str(sweep / "1"), str(sweep / "3")]  # 0.9 and 0.7, not the two lowest


def test_analyze_merges_sweeps_from_several_folders(tmp_path):
    a, b = make_sweep(tmp_path / "a"), make_sweep(tmp_path / "b")
    out = subprocess.run([sys.executable, "-m", "hexsweep.analyze", str(a), str(b), "--out", str(tmp_path / "m")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "20 jobs: 6 completed, 2 corrupt, 2 crashed, 2 failed, 2 missing, 2 not_started, 2 oom, 2 stalled" \
        in out.stdout
    df = pd.read_csv(tmp_path / "m" / "results.csv")
    assert set(df["sweep"]) == {str(a), str(b)} and len(df) == 20
    bad = subprocess.run([sys.executable, "-m", "hexsweep.analyze", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("hexsweep: error: ")
    job = subprocess.run([sys.executable, "-m", "hexsweep.analyze", str(a / "0")], capture_output=True, text=True,
                         timeout=60)
    assert job.returncode == 2 and job.stderr == f"hexsweep: error: {a / '0'} is a job folder: give its sweep " \
        f"folder ({a.resolve()}), or two job folders with --diff\n"


def test_oom_is_recorded_and_retried_at_half_batch(tiny_cfg, tmp_path):
    cfg = tiny_cfg("batch_size=256", "fault.oom_above_batch_size=128", "trainer.epochs=1")
    r = train_job_recorded(cfg, tmp_path / "oom")
    assert r.status == "oom" and r.batch_size == 256
    assert "out of memory at batch_size=256" in r.error.message
    cfg = tiny_cfg("batch_size=256", "fault.oom_above_batch_size=128", "trainer.epochs=1", "retry_on_oom=true")
    r = train_job_recorded(cfg, tmp_path / "retry")
    assert r.status == "completed" and r.batch_size == 128
    assert r.oom_batch_size == 256 and r.retried is True
    row = aggregate([tmp_path]).set_index("job_dir").loc[str(tmp_path / "retry")]
    assert row["retried"] and row["oom_batch_size"] == 256 and row["batch_size"] == 128


def test_nan_objective_is_a_failed_job(tiny_cfg, tmp_path):
    r = train_job_recorded(tiny_cfg("fault.nan_at_epoch=1", "trainer.epochs=2"), tmp_path / "nan")
    assert r.status == "failed" and r.error.type == "NonFiniteObjective"


def test_a_report_with_no_objective_yet_says_so(tmp_path):
    """A sweep stopped before any job trained: no "None" objective, no "nan" error text."""
    sweep = tmp_path / "sweep"
    for num, status in enumerate(["interrupted", "interrupted"]):
        (sweep / str(num)).mkdir(parents=True)
        (sweep / str(num) / "result.json").write_text(json.dumps({"status": status, "overrides": [f"seed={num}"]}))
    write_report(aggregate([sweep]), sweep, [sweep], plots="off")
    report, page = (sweep / "report.md").read_text(), (sweep / "report.html").read_text()
    assert "; no job recorded its objective yet." in report and "no job recorded its objective yet" in page
    assert "None" not in report and "None" not in page
    assert "- job 0 `seed=0`: **interrupted**\n" in report and "nan" not in report.split("## All jobs")[0]
