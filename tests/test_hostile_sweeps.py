"""Hostile input to the sweep machinery: malformed job files are that one job's problem."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import psutil
import pytest
from sweep_helpers import sweep_cmd

from hexsweep.jobfolder import completed_result, read_result, sibling_results
from hexsweep.report.aggregate import aggregate, load_curves
from hexsweep.report.files import write_report
from hexsweep.resources.admission import learned_need

PR_SET_CHILD_SUBREAPER = 36


def good(root, name, value):
    d = root / name
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({
        "status": "completed", "overrides": [f"seed={name}"], "objective": {"metric": "val_objective", "value": value},
        "signature": {"model": "small"}, "peak_rss_mb": 100.0}))
    return d


def test_malformed_job_files_become_corrupt_rows_and_the_rest_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    good(sweep, "0", 1.0)
    for name, content in {"1": b"[]", "2": b"\xff\xfe not utf-8", "3": b'{"status": "sideways"}'}.items():
        (sweep / name).mkdir()
        (sweep / name / "result.json").write_bytes(content)
        (sweep / name / ".hydra").mkdir()
        (sweep / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
    curves = good(sweep, "4", 0.5)
    (curves / "metrics.jsonl").write_bytes(b'5\n\xff\xfe\n{"loss": 1}\n{"epoch": 1, "val_objective": 0.5}\n')
    (sweep / "sweep.json").write_text(json.dumps({"jobs": {"7": "nonsense", "x": {}, "8": {"dir": "8"}}}))

    df = aggregate([sweep]).set_index("job_num")
    assert df.loc[1, "status"] == df.loc[2, "status"] == df.loc[3, "status"] == "corrupt"
    assert "holds a list" in df.loc[1, "error"] and "UnicodeDecodeError" in df.loc[2, "error"]
    assert df.loc[3, "ov.seed"] == "3"  # the overrides still come from Hydra's .hydra/ files
    assert df.loc[8, "status"] == "not_started"
    assert load_curves(df.loc[[4]].reset_index()) == {str(curves): [{"epoch": 1, "val_objective": 0.5}]}
    summary = write_report(df.reset_index(), sweep, [sweep])
    assert summary["best"]["job_num"] == 4 and summary["by_status"]["corrupt"] == 3
    out = subprocess.run([sys.executable, "-m", "hexsweep.analyze", str(sweep)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # a new job's memory admission reads its siblings' results: the bad ones are skipped
    assert learned_need(sibling_results(sweep), {"model": "small"}).ram_mb > 100
    # resume reruns a corrupt job: it is not completed
    assert completed_result(sweep / "1", ["seed=1"]) is None
    assert read_result(sweep / "1").status == "corrupt"


@pytest.fixture
def full_disk(tmp_path):
    """A 300 KiB file system: a tiny sweep fills it while its jobs write their folders."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_leaves_no_job_running_and_ends_in_one_line(full_disk, data_root, tiny_dataset):
    out = subprocess.run(sweep_cmd(full_disk, data_root, "seed=0,1,2", "trainer.max_steps_per_epoch=null"),  # whole
                         capture_output=True, text=True, timeout=300)  # epochs write what fills the disk
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hexsweep: error: cannot write the sweep's report in ") and "No space left" in last
    assert "Traceback" not in out.stderr
    for result in full_disk.rglob("result.json"):
        record = read_result(result.parent)
        assert record is None or record.status != "running"


@pytest.mark.slow
def test_chdir_true_keeps_one_slot_pool_and_one_dataset(tmp_path, data_root, tiny_dataset):
    """With hydra.job.chdir=true each job runs in its own folder; relative paths.* still mean the
    launch directory's, so two parallel jobs share one slot pool (cpu-0, cpu-1: not cpu-0 twice)."""
    cmd = [c for c in sweep_cmd(tmp_path, data_root, "seed=0,1", "hydra.launcher.n_jobs=2", "hydra.job.chdir=true")
           if not c.startswith("paths.outputs=")] + ["paths.outputs=outputs"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    slots = {read_result(sweep / j).slot for j in ("0", "1")}
    assert slots == {"cpu-0", "cpu-1"}
    assert not list(sweep.rglob(".locks")) and not list(sweep.rglob("data"))


def test_names_and_an_unwritable_outputs_root_are_one_line_before_hydra(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)], capture_output=True)
    try:
        cases = [(["hydra.job.name=../../x"], "hydra.job.name='../../x' is invalid"),
                 (["-m", "hydra.job.name=a/b", "seed=0,1"], "hydra.job.name='a/b' is invalid")]
        if made.returncode == 0:
            cases += [(["-m", f"paths.outputs={ro}/out", "seed=0,1"], "cannot be written (Read-only file system)")]
        for args, message in cases:
            out = subprocess.run([sys.executable, "-m", "hexsweep.train", "debug=tiny", *args], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 2 and out.stderr.startswith("hexsweep: error: "), out.stderr
            assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert not (tmp_path.parent / "x.log").exists() and not (tmp_path / "outputs").exists()
    finally:
        if made.returncode == 0:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)


@pytest.mark.slow
def test_a_second_driver_on_a_live_sweep_folder_refuses_or_waits(tmp_path, data_root, tiny_dataset, spawn):
    """The resume command run while the first driver still runs: refused in one line naming the
    live driver; with resume=wait it waits for it. The live job never runs twice."""
    import json
    import socket
    import time

    from sweep_helpers import running_with_slot, sweep_dirs, wait_for

    # whole epochs: the first driver must outlive the second one's start-up
    args = ["trainer.epochs=3", "fault.sleep_s_per_epoch=1", "seed=0", "trainer.max_steps_per_epoch=null"]
    first = spawn(sweep_cmd(tmp_path, data_root, *args))
    wait_for(lambda: running_with_slot(tmp_path, "0"), timeout=120)
    sweep = sweep_dirs(tmp_path)[0]
    records = {name: (sweep / name).read_bytes() for name in ("multirun.yaml", "sweep.json")}
    second = subprocess.run(sweep_cmd(tmp_path, data_root, *args, f"hydra.sweep.dir={sweep}", "resume=true"),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"hexsweep: error: {sweep} is being run by another driver (pid {first.pid} on {socket.gethostname()}")
    # refused before it wrote anything there: the live sweep's command and jobs stay its own
    assert {name: (sweep / name).read_bytes() for name in records} == records
    waiting = spawn(sweep_cmd(tmp_path, data_root, *args, f"hydra.sweep.dir={sweep}", "resume=wait"))
    time.sleep(2)
    assert waiting.poll() is None  # still waiting for the first driver
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    _, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    epochs = [json.loads(line)["epoch"] for line in (sweep / "0" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # ran once: the waiting driver found it completed


@contextlib.contextmanager
def adopting_orphans():
    """This process adopts the orphans of its children (Linux's child subreaper), so that a
    test can wait for a process a command left behind and read how it ended."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        pytest.skip("no child subreaper here")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0)


def test_bad_launcher_values_are_one_line_before_any_job(tmp_path):
    """Refused before any job, and the job server the command started early is ended with it:
    it ran on importing its preload, seconds of CPU, after the command had exited."""
    for arg, message in [("hydra.launcher.timeout_s=-1", "hydra.launcher.timeout_s=-1"),
                         ("hydra.launcher.stall_timeout_s=0", "hydra.launcher.stall_timeout_s=0"),
                         ("hydra.launcher.kill_grace_s=-5", "hydra.launcher.kill_grace_s=-5")]:
        with adopting_orphans():
            before = {p.pid for p in psutil.Process().children()}
            out = subprocess.run([sys.executable, "-m", "hexsweep.train", "-m", "debug=tiny", "seed=0,1", arg,
                                  f"paths.outputs={tmp_path}"], capture_output=True, text=True, timeout=120)
            ended = []  # how what the command left (its job server, its resource tracker) ended
            for child in psutil.Process().children():
                if child.pid not in before:
                    with contextlib.suppress(ChildProcessError):
                        ended.append(os.waitpid(child.pid, 0)[1])
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            next(line for line in out.stderr.splitlines() if line.startswith("hexsweep: error: "))]
        assert message in out.stderr and "is invalid: allowed" in out.stderr
        assert not list((tmp_path / "multirun").glob("*/*/0"))  # no job started
        # the server, by the driver at its exit; unended, it exits by itself once its imports are done
        assert [s for s in ended if os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGTERM], ended


def test_a_job_whose_process_still_runs_is_never_started_again(tmp_path):
    """A job that outlived its driver (its pid alive on this host) is not restarted by a resume:
    two runs would write into one folder."""
    import json
    import socket

    from omegaconf import OmegaConf

    from hexsweep.sweep.train_app import TRAIN_APP

    live = subprocess.Popen(["sleep", "60"])
    try:
        job = tmp_path / "0"
        job.mkdir()
        (job / "result.json").write_text(json.dumps({"status": "running", "pid": live.pid,
                                                     "host": socket.gethostname()}))
        cfg = OmegaConf.create({"resume": True, "hydra": {"overrides": {"task": ["seed=0"]}}})
        assert TRAIN_APP.still_running(cfg, job) == f"pid {live.pid} on {socket.gethostname()}"
    finally:
        live.kill()
        live.wait()
    assert TRAIN_APP.still_running(cfg, job) is None  # its process is gone: it reads as crashed, rerun


def test_the_report_warns_when_jobs_ran_on_different_code_or_packages(tmp_path):
    """Two jobs of one sweep with other commits and packages (as after a `git pull` mid-sweep)."""
    import json

    from hexsweep.report.aggregate import aggregate
    from hexsweep.report.files import write_report

    sweep = tmp_path / "sweep"
    for name, commit, dirty, packages in (("0", "a" * 40, False, "1" * 64), ("1", "b" * 40, True, "2" * 64)):
        d = good(sweep, name, 1.0 + int(name))
        record = json.loads((d / "result.json").read_text())
        record["env"] = {"git": {"commit": commit, "dirty": dirty, "diff_sha256": "c" * 64 if dirty else None},
                         "packages_sha256": packages}
        (d / "result.json").write_text(json.dumps(record))
    df = aggregate([sweep])
    assert sorted(df["code"]) == ["a" * 12, "b" * 12 + "+" + "c" * 8]
    summary = write_report(df, sweep, [sweep])
    warning = summary["provenance_warning"]
    assert warning.startswith("these jobs ran on 2 versions of the code")
    assert "2 versions of the installed packages" in warning
    assert f"**Warning**: {warning}." in (sweep / "report.md").read_text()
    same = tmp_path / "same"
    for name in ("0", "1"):
        good(same, name, 1.0)
    assert write_report(aggregate([same]), same, [same])["provenance_warning"] is None


def test_analyze_skips_symlink_loops_in_a_sweep_folder_by_name(tmp_path):
    """Links that loop (to themselves, to each other) beside the job folders: each is named and
    skipped, the jobs are analysed, and no ELOOP traceback."""
    sweep = tmp_path / "sweep"
    good(sweep, "0", 1.0)
    good(sweep, "1", 0.5)
    (sweep / "loop").symlink_to("loop")
    (sweep / "a").symlink_to("b")
    (sweep / "b").symlink_to("a")
    (sweep / "0" / "again").symlink_to("again")  # inside a job folder too
    out = subprocess.run([sys.executable, "-m", "hexsweep.analyze", str(sweep)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    for name in ("loop", "a", "b"):
        assert f"skipped {sweep / name}: Too many levels of symbolic links" in out.stderr
    assert "2 jobs: 2 completed" in out.stdout
    assert sorted(pd.read_csv(sweep / "results.csv")["job_num"]) == [0, 1]


def test_a_sweep_into_a_folder_with_an_earlier_sweeps_jobs_needs_resume(tmp_path, data_root):
    """Without resume=true its jobs would overwrite the earlier ones and the report would mix the
    two sweeps: refused in one line before anything is written there, multirun.yaml included."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    earlier = {sweep / "multirun.yaml": b"the earlier sweep's command\n", sweep / "0" / "result.json": b"{}"}
    for path, content in earlier.items():
        path.write_bytes(content)
    out = subprocess.run(sweep_cmd(tmp_path, data_root, "seed=0,1", f"hydra.sweep.dir={sweep}"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr == (f"hexsweep: error: {sweep} holds 1 job folder of an earlier sweep: add resume=true to "
                          "continue it (its completed jobs are kept), or give another hydra.sweep.dir\n")
    assert {path: path.read_bytes() for path in earlier} == earlier
    assert sorted(p.name for p in sweep.iterdir()) == [".driver.lock", "0", "multirun.yaml"]
