"""The sweep's plots after its last line (issue 24): drawn by a process of their own, which says
how it went (plots.json, report.md) and never overwrites a newer report."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import matplotlib.image as mpimg
import pytest
from sweep_helpers import run_sweep, sweep_dirs
from test_aggregate import make_sweep

from hexsweep.report import draw, drawing
from hexsweep.report import end as report_end
from hexsweep.report.aggregate import aggregate
from hexsweep.report.files import write_report

KEY = "hydra.callbacks.sweep_report.plots"


@pytest.fixture
def data(data_root, tiny_dataset):
    return data_root


def plots_state(folder, timeout=120.0) -> dict:
    """plots.json once the drawing has ended (done, failed or superseded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads((folder / "plots.json").read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("state") in ("done", "failed", "superseded"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"the plots of {folder} were not drawn in {timeout} s: {state}")


@pytest.mark.slow
def test_a_sweeps_plots_come_after_its_last_line_and_then_join_its_report(tmp_path, data):
    out = run_sweep(tmp_path, data, "seed=0,1", "trainer.epochs=2", f"{KEY}=background")
    assert out.returncode == 0, out.stderr
    sweep = sweep_dirs(tmp_path)[0]
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"[hexsweep] report: {sweep / 'report.md'} (its plots are being drawn in the background: " \
                   f"{sweep / 'plots.json'})"
    state = plots_state(sweep)
    assert state["state"] == "done", (sweep / "plots.log").read_text()
    assert {"curves.png", "by_experiment.png", "accuracy_vs_value_loss.png"} <= set(state["plots"])
    report = (sweep / "report.md").read_text()
    assert "![policy accuracy vs value loss](accuracy_vs_value_loss.png)" in report
    assert "Being drawn" not in report and "## All jobs" in report
    assert "accuracy_vs_value_loss.png" in (sweep / "report.html").read_text()
    for png in state["plots"]:
        assert mpimg.imread(sweep / png).std() > 0


@pytest.mark.slow
def test_plots_off_and_wait(tmp_path, data):
    out = run_sweep(tmp_path / "off", data, "seed=0", "trainer.epochs=1", f"{KEY}=off")
    assert out.returncode == 0, out.stderr
    sweep = sweep_dirs(tmp_path / "off")[0]
    assert out.stderr.strip().endswith("report.md (plots off)")
    assert not list(sweep.glob("*.png")) and not (sweep / "plots.json").exists()
    assert f"Not drawn (`{KEY}=off`)" in (sweep / "report.md").read_text()
    out = run_sweep(tmp_path / "wait", data, "seed=0", "trainer.epochs=1", f"{KEY}=wait")
    assert out.returncode == 0, out.stderr
    sweep = sweep_dirs(tmp_path / "wait")[0]
    assert out.stderr.strip().endswith(f"[hexsweep] report: {sweep / 'report.md'}")
    assert (sweep / "by_experiment.png").stat().st_size > 0  # drawn before the last line


def test_a_bad_plots_value_is_one_line_before_anything_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hexsweep.train", "-m", "seed=0,1", f"{KEY}=later",
                          f"paths.outputs={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"hexsweep: error: {KEY}='later' is invalid: allowed auto (background at a "
                                  "terminal, else wait), background (drawn after the sweep's last line), wait "
                                  "(before it) or off")
    assert not (tmp_path / "multirun").exists()


def test_a_drawing_that_fails_says_so_in_the_report_and_plots_json(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep")
    summary = write_report(aggregate([sweep]), sweep, [sweep], plots="background")
    assert "Being drawn in the background" in (sweep / "report.md").read_text()
    (sweep / "by_experiment.png").mkdir()  # the figure cannot be written: a folder holds its name
    assert drawing.draw(sweep, summary["report_id"], 200) == 1
    state = json.loads((sweep / "plots.json").read_text())
    assert state["state"] == "failed" and state["error"].startswith("IsADirectoryError")
    report = (sweep / "report.md").read_text()
    assert f"Could not be drawn: {state['error']} (the traceback: {sweep / 'plots.log'})" in report
    assert f"python -m hexsweep.analyze {sweep}" in report and "## All jobs" in report
    assert "Traceback" in capsys.readouterr().err  # what plots.log receives


def test_a_drawing_for_a_replaced_report_leaves_the_newer_one_alone(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    old = write_report(aggregate([sweep]), sweep, [sweep], plots="background")["report_id"]
    write_report(aggregate([sweep]), sweep, [sweep], plots="off")  # e.g. a resumed sweep's, since
    before = (sweep / "report.md").read_text()
    assert drawing.draw(sweep, old, 200) == 0
    assert json.loads((sweep / "plots.json").read_text())["state"] == "superseded"
    assert (sweep / "report.md").read_text() == before and not list(sweep.glob("*.png"))


def test_the_background_process_draws_and_rewrites_the_report(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    summary = write_report(aggregate([sweep]), sweep, [sweep], plots="background")
    assert report_end.start_drawing(sweep, summary)
    proc = report_end._drawers[-1][0]
    time.sleep(1)
    assert proc.poll() is None and not (sweep / "by_experiment.png").exists()  # it waits for our exit
    report_end.release_drawings()  # as our exit would
    state = plots_state(sweep)
    assert state["state"] == "done" and "by_experiment.png" in state["plots"], (sweep / "plots.log").read_text()
    assert "![objective per configuration" in (sweep / "report.md").read_text()
    assert proc.wait(60) == 0 and not list(sweep.glob(".plots-*"))


def test_plots_are_drawn_in_the_sweep_when_no_process_can_start(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path / "sweep")
    summary = write_report(aggregate([sweep]), sweep, [sweep], plots="background")

    def refused(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(report_end.subprocess, "Popen", refused)
    assert report_end.start_drawing(sweep, summary) is False
    assert json.loads((sweep / "plots.json").read_text())["state"] == "done"
    assert (sweep / "by_experiment.png").stat().st_size > 0
    assert "![objective per configuration" in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_a_searchs_optuna_plots_are_drawn_in_the_background_from_its_storage(tmp_path, data):
    out = run_sweep(tmp_path, data, "hydra/sweeper=hexsweep_optuna", "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.n_jobs=2", "hydra.sweeper.study_name=s", "optim.lr=interval(1e-4,1e-2)",
                    "trainer.epochs=2", f"{KEY}=background")
    assert out.returncode == 0, out.stderr
    sweep = sweep_dirs(tmp_path)[0]
    assert "being drawn in the background" in out.stderr.strip().splitlines()[-1]
    state = plots_state(sweep)
    assert state["state"] == "done" and "errors" not in state, (sweep / "plots.log").read_text()
    assert {"optuna_history.png", "by_experiment.png"} <= set(state["plots"])
    assert "![optuna_history](optuna_history.png)" in (sweep / "report.md").read_text()
    assert not (sweep / report_end.PENDING_PLOTS).exists()


def test_a_study_whose_storage_is_unknown_is_said_and_the_reports_plots_still_drawn(tmp_path, monkeypatch):
    from hexsweep.search.storage import STORAGE_ENV

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    sweep = make_sweep(tmp_path / "sweep")
    summary = write_report(aggregate([sweep]), sweep, [sweep], plots="background")
    (sweep / report_end.PENDING_PLOTS).write_text(json.dumps({"optuna_study": "s"}))
    assert drawing.draw(sweep, summary["report_id"], 200) == 0
    state = json.loads((sweep / "plots.json").read_text())
    assert state["state"] == "done" and "by_experiment.png" in state["plots"]
    assert state["errors"]["optuna_study"] == \
        f"RuntimeError: the storage of study 's' is unknown here ({STORAGE_ENV} is not set)"


@pytest.mark.slow
def test_a_races_plot_is_drawn_in_the_background_and_joins_race_md(tmp_path, data):
    out = run_sweep(tmp_path, data, "search=race", "optim.lr=0.001,0.1",
                    "hydra.sweeper.min_seeds=2", "hydra.sweeper.max_seeds=2", "trainer.epochs=1",
                    f"{KEY}=background")
    assert out.returncode == 0, out.stderr
    sweep = sweep_dirs(tmp_path)[0]
    state = plots_state(sweep)
    assert state["state"] == "done" and "race.png" in state["plots"], (sweep / "plots.log").read_text()
    assert "race.png" in (sweep / "race.md").read_text() and "race.png" in (sweep / "report.md").read_text()


def test_a_drawing_stopped_by_sigterm_says_so(tmp_path, monkeypatch):
    import os
    import signal

    sweep = make_sweep(tmp_path / "sweep")
    summary = write_report(aggregate([sweep]), sweep, [sweep], plots="background")

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill <pid>` would, in the middle of the drawing
        raise AssertionError("SIGTERM did not stop the drawing")

    monkeypatch.setattr(drawing, "draw_plots", terminated)
    monkeypatch.setattr(os, "nice", lambda n: 0)  # main() lowers its process's priority: not pytest's
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        assert draw.main([str(sweep), summary["report_id"]]) == 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    state = json.loads((sweep / "plots.json").read_text())
    assert state["state"] == "failed" and state["error"] == "Stopped: stopped by SIGTERM"
    assert "Could not be drawn: Stopped: stopped by SIGTERM" in (sweep / "report.md").read_text()


def test_a_drawing_overtaken_by_a_newer_report_leaves_its_figures_alone(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path / "sweep")
    old = write_report(aggregate([sweep]), sweep, [sweep], plots="background")["report_id"]
    real = drawing.draw_plots

    def overtaken(df, summary, max_curves, table=None, into=None):
        made = real(df, summary, max_curves, table, into)
        write_report(aggregate([sweep]), sweep, [sweep], plots="wait")  # analyze, meanwhile
        return made

    monkeypatch.setattr(drawing, "draw_plots", overtaken)
    assert drawing.draw(sweep, old, 200) == 0
    newer = json.loads((sweep / "summary.json").read_text())["report_id"]
    assert newer != old and "Being drawn" not in (sweep / "report.md").read_text()
    # the newer report's own figures stay: the overtaken drawing published nothing
    assert (sweep / "by_experiment.png").stat().st_mtime_ns <= (sweep / "report.md").stat().st_mtime_ns
    assert json.loads((sweep / "plots.json").read_text())["state"] == "superseded"
    assert not list(sweep.glob(".plots-*"))


def test_a_drawing_whose_folder_is_deleted_does_not_make_it_again(tmp_path, monkeypatch):
    import shutil

    sweep = make_sweep(tmp_path / "sweep")
    summary = write_report(aggregate([sweep]), sweep, [sweep], plots="background")
    real = drawing.draw_plots

    def deleted(*args, **kwargs):
        made = real(*args, **kwargs)
        shutil.rmtree(sweep)  # the user removes the sweep folder while its plots are drawn
        return made

    monkeypatch.setattr(drawing, "draw_plots", deleted)
    assert drawing.draw(sweep, summary["report_id"], 200) == 0
    assert not sweep.exists()


def test_plots_setting_spellings():
    from hexsweep.train import precheck_argv

    assert report_end.check_plots(False) == "off"  # YAML's reading of an unquoted off
    assert report_end.resolve_plots("auto") == "wait"  # not at a terminal (pytest captures stderr)
    assert report_end.resolve_plots("background") == "background"
    precheck_argv(["-m", f"{KEY}='wait'", f"{KEY}=${{oc.env:PLOTS,off}}", "hydra.job.name=x"])  # no exit
    with pytest.raises(SystemExit):
        precheck_argv(["-m", f"{KEY}=sometimes"])


def test_a_report_lock_held_for_ever_does_not_hang_the_next_report(tmp_path, monkeypatch, capsys):
    import fcntl

    from hexsweep.report import files

    sweep = make_sweep(tmp_path / "sweep")
    old = write_report(aggregate([sweep]), sweep, [sweep], plots="background")["report_id"]
    monkeypatch.setattr(files, "REPORT_LOCK_WAIT_S", 0.5)
    with open(sweep / files.REPORT_LOCK, "a") as held:  # as a drawing stopped by SIGSTOP holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        # a drawing gives up, and says so where it can
        assert drawing.draw(sweep, old, 200) == 1
        # a report goes ahead without the lock, and says so
        new = write_report(aggregate([sweep]), sweep, [sweep], plots="off")["report_id"]
    assert new != old and json.loads((sweep / "summary.json").read_text())["report_id"] == new
    assert "held by another process for 0.5 s (a stopped plot drawing?)" in capsys.readouterr().err
