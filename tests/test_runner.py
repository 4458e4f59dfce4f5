"""The job runner's promises: no fork from a threaded process, and every wait ends.

Real processes throughout: a SIGSTOPped job, a job that blocks for ever deaf to SIGINT, a
driver interrupted once and twice, and the SQLite search that once deadlocked a job.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import time

import pandas as pd
import psutil
import pytest
from conftest import TINY
from filelock import FileLock
from sweep_helpers import launched, read_result, run_sweep, running_with_slot, sweep_cmd, sweep_dirs, wait_for

from hexsweep.cli import compose
from hexsweep.data.generate import dataset_folder
from hexsweep.naming import host
from hexsweep.resources.slots import read_holders

pytestmark = pytest.mark.slow


@pytest.fixture
def data(data_root, tiny_dataset):
    return data_root


def start(outputs, data, *overrides):
    """The sweep's driver, killed with everything it started when the test's block ends."""
    return launched(sweep_cmd(outputs, data, *overrides))


def free_slots(outputs) -> bool:
    return not read_holders(outputs / ".locks" / host())


def test_jobs_come_from_a_single_threaded_server_not_the_driver(hydra_sweep_runner, tmp_path):
    """Each job's parent is the job server, which has one thread, whatever the driver runs."""

    def task(cfg):
        parent = os.getppid()
        return parent, len(os.listdir(f"/proc/{parent}/task"))

    with hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=task,
                            config_path="configs", config_name="compose.yaml",
                            overrides=["hydra/launcher=hexsweep", "hydra.launcher.progress=off", "+a=1,2"],
                            temp_dir=str(tmp_path)) as sweep:
        rets = sweep.returns[0]
    parents = {r.return_value[0] for r in rets}
    assert os.getpid() not in parents
    assert all(r.return_value[1] == 1 for r in rets)  # fork from a process with no other thread


def test_a_stopped_job_is_killed_as_stalled_and_frees_its_slot(tmp_path, data):
    """SIGSTOP freezes a job (its sampler thread too); the watchdog kills it, records it
    ``stalled``, frees its slot, and the other job finishes."""
    with start(tmp_path, data, "trainer.epochs=30,2", "fault.sleep_s_per_epoch=0.5", "hydra.launcher.n_jobs=2",
               "hydra.launcher.stall_timeout_s=5") as proc:
        r = wait_for(lambda: running_with_slot(tmp_path, "0"), timeout=120)
        proc.also.append(psutil.Process(r["pid"]))  # a stopped job ignores its parent's death: killed at the end
        os.kill(r["pid"], signal.SIGSTOP)
        out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    sweep = sweep_dirs(tmp_path)[0]
    assert read_result(sweep / "0")["status"] == "stalled"
    assert "made no progress" in read_result(sweep / "0")["error"]["message"]
    assert read_result(sweep / "1")["status"] == "completed"
    df = pd.read_csv(sweep / "results.csv").set_index("job_num")
    assert df.loc[0, "status"] == "stalled"
    assert "0 (trainer.epochs=30): stalled" in err
    assert not psutil.pid_exists(r["pid"]) or psutil.Process(r["pid"]).status() == psutil.STATUS_ZOMBIE
    assert free_slots(tmp_path)


def test_a_job_waiting_for_another_jobs_dataset_is_not_stalled(tmp_path, tiny_dataset):
    """A job whose dataset another process is generating waits on the dataset's file lock for
    longer than the stall timeout, beating, and then trains on the dataset the other one wrote.
    Here the test is the other process: it holds the lock, then puts the dataset in place."""
    data = tmp_path / "data"
    data.mkdir()
    folder = dataset_folder(compose(TINY).data, data)
    lock = FileLock(str(folder) + ".lock")
    cmd = sweep_cmd(tmp_path, data, "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "strength.games=0",
                    "hydra.launcher.stall_timeout_s=3")
    with lock, launched(cmd) as proc:
        wait_for(lambda: running_with_slot(tmp_path, "0"), timeout=120)  # its next step: the dataset
        time.sleep(6)  # twice the stall timeout
        shutil.copytree(tiny_dataset, folder)  # as the generating job would: whole, then unlock
        lock.release()
        out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    job = sweep_dirs(tmp_path)[0] / "0"
    record = read_result(job)
    assert record["status"] == "completed" and record["data"]["folder"] == str(folder)
    assert "another process is generating it" in (job / "train.log").read_text()  # it did wait on the lock


def test_a_job_that_blocks_for_ever_is_stalled_and_resume_reruns_it(tmp_path, data):
    out = run_sweep(tmp_path, data, "fault.hang_at_epoch=1,null", "hydra.launcher.n_jobs=2",
                    "hydra.launcher.stall_timeout_s=4", timeout=240)
    assert out.returncode == 1, out.stderr
    # the killed job's bars took no semaphore for the resource tracker to find leaked at the exit
    assert out.stderr.splitlines()[-1].startswith("hexsweep: 1 of 2 jobs failed: 0 "), out.stderr
    sweep = sweep_dirs(tmp_path)[0]
    assert read_result(sweep / "0")["status"] == "stalled"
    assert read_result(sweep / "1")["status"] == "completed"
    assert free_slots(tmp_path)
    first_start = read_result(sweep / "0")["started_at"]
    kept = read_result(sweep / "1")["started_at"]
    again = run_sweep(tmp_path, data, "fault.hang_at_epoch=1,null", "hydra.launcher.n_jobs=2",
                      "hydra.launcher.stall_timeout_s=4", f"hydra.sweep.dir={sweep}", "resume=true", timeout=240)
    # resume counts a stalled job as not completed: it runs (and stalls) again; job 1 is kept
    assert again.returncode == 1, again.stderr
    assert read_result(sweep / "1")["started_at"] == kept
    assert read_result(sweep / "0")["status"] == "stalled"
    assert read_result(sweep / "0")["started_at"] != first_start


def test_interrupt_escalates_to_sigkill_for_a_job_deaf_to_sigint(tmp_path, data):
    with start(tmp_path, data, "fault.hang_at_epoch=1", "hydra.launcher.kill_grace_s=2",
               "hydra.launcher.stall_timeout_s=null") as proc:
        r = wait_for(lambda: running_with_slot(tmp_path, "0"), timeout=120)
        proc.also.append(psutil.Process(r["pid"]))
        sweep = sweep_dirs(tmp_path)[0]
        wait_for(lambda: (sweep / "0" / "metrics.jsonl").exists(), timeout=120)  # now it hangs
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: python -m hexsweep.train -m " in err and f" hydra.sweep.dir={sweep} resume=true\n" in err
    assert read_result(sweep / "0")["status"] == "interrupted"
    assert not psutil.pid_exists(r["pid"]) or psutil.Process(r["pid"]).status() == psutil.STATUS_ZOMBIE
    assert free_slots(tmp_path)


def test_a_closed_terminal_sighup_ends_the_sweep_like_sigterm(tmp_path, data):
    """A closed terminal sends SIGHUP to the sweep's whole process group (driver, job server,
    resource tracker): the jobs are interrupted, the report written, the resume line printed,
    exit 130, and no traceback (the server and tracker ignore it)."""
    cmd = sweep_cmd(tmp_path, data, "seed=0", "trainer.epochs=5", "fault.sleep_s_per_epoch=1")
    with launched(cmd, start_new_session=True) as proc:
        r = wait_for(lambda: running_with_slot(tmp_path, "0"), timeout=120)
        sweep = sweep_dirs(tmp_path)[0]
        wait_for(lambda: (sweep / "0" / "metrics.jsonl").exists(), timeout=120)
        os.killpg(proc.pid, signal.SIGHUP)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyError" not in err
    # the whole command, ready to paste: the same program and overrides, in its folder, resume=true
    again = shlex.split(next(line for line in err.splitlines() if "resume with: " in line).partition(": ")[2])
    assert again[:4] == ["python", "-m", "hexsweep.train", "-m"] and again[-2:] == [f"hydra.sweep.dir={sweep}",
                                                                                    "resume=true"]
    assert sorted(again[4:-2]) == sorted(cmd[4:])
    assert (sweep / "report.md").exists()
    assert read_result(sweep / "0")["status"] == "interrupted"
    assert not psutil.pid_exists(r["pid"]) or psutil.Process(r["pid"]).status() == psutil.STATUS_ZOMBIE


def test_sigterm_while_the_report_is_written_waits_for_the_report(tmp_path, data):
    """SIGTERM after the last job ended, while the driver writes the report (results.csv is its
    first file, report.md its last): the report is finished, then the sweep ends as an
    interrupted one does (resume line, 130), not killed without its report."""
    with launched(sweep_cmd(tmp_path, data, "seed=0", "trainer.epochs=1", "trainer.max_steps_per_epoch=3")) as proc:
        table = wait_for(lambda: next((tmp_path / "multirun").glob("*/*/results.csv"), None), timeout=240,
                         poll=0.005)
        written = (table.parent / "report.md").exists()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert not written  # the signal came during the report
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "SIGTERM: the jobs have ended; writing the report first" in err
    assert (table.parent / "report.md").exists()
    last = err.splitlines()[-1]
    assert last.startswith("[hexsweep] resume with: python -m hexsweep.train -m ")
    assert last.endswith(f" hydra.sweep.dir={table.parent} resume=true")


def test_a_second_interrupt_kills_at_once(tmp_path, data):
    with start(tmp_path, data, "fault.hang_at_epoch=1", "hydra.launcher.kill_grace_s=3600",
               "hydra.launcher.stall_timeout_s=null") as proc:
        r = wait_for(lambda: running_with_slot(tmp_path, "0"), timeout=120)
        proc.also.append(psutil.Process(r["pid"]))  # deaf to SIGINT: only a kill ends it
        sweep = sweep_dirs(tmp_path)[0]
        wait_for(lambda: (sweep / "0" / "metrics.jsonl").exists(), timeout=120)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # not the hour of kill_grace_s
    assert proc.returncode == 130, err
    assert read_result(sweep / "0")["status"] == "interrupted"


@pytest.mark.parametrize("attempt", [1, 2])
def test_the_sqlite_search_that_deadlocked_finishes(tmp_path, data, attempt):
    """The command that once left a job stuck in sqlite3Malloc (forked while a driver thread
    held SQLite's mutex) now always ends."""
    db = f"sqlite:///{tmp_path / 's.db'}"
    # 2 steps an epoch: the deadlock was in forking a job, not in training it, and the search's
    # larger models (up to 64 channels, 6 blocks) made whole epochs the test's main cost
    out = run_sweep(tmp_path, data, "search=hex_tpe", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                    f"hydra.sweeper.storage={db}", "trainer.epochs=1", "trainer.max_steps_per_epoch=2", timeout=300)
    assert out.returncode == 0, out.stderr
    statuses = [r["status"] for d in sweep_dirs(tmp_path)[0].iterdir() if d.is_dir() and (r := read_result(d))]
    assert len(statuses) == 4 and set(statuses) <= {"completed", "pruned"}, statuses


def test_a_killed_driver_takes_its_jobs_down(tmp_path, data):
    """kill -9 of the driver: the job server sees its driver gone and exits, and each job,
    losing its parent, stops (recorded interrupted) and frees its slot. No job runs on orphaned."""
    with start(tmp_path, data, "fault.sleep_s_per_epoch=5", "trainer.epochs=20") as proc:
        r = wait_for(lambda: running_with_slot(tmp_path, "0"), timeout=120)
        job = psutil.Process(r["pid"])
        server = job.parent()  # hexsweep.train's job server, with torch imported:
        proc.also += [job, server]  # orphaned once the driver dies: killed at the end if they outlive it
        assert server.pid != proc.pid and server.num_threads() == 1  # still single-threaded
        proc.kill()
        proc.wait()
        sweep = sweep_dirs(tmp_path)[0]
        wait_for(lambda: read_result(sweep / "0")["status"] != "running", timeout=60)
        assert read_result(sweep / "0")["status"] == "interrupted"
        wait_for(lambda: not job.is_running() or job.status() == psutil.STATUS_ZOMBIE, timeout=30)
        assert free_slots(tmp_path)
