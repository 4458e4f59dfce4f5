"""Lose no epochs: an interrupted job continues from last.pt and ends exactly where an
uninterrupted one does (CPU, one thread); the job folder records exactly what ran."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import shared_folder
from sweep_helpers import read_result, run_sweep, running_with_slot, sweep_cmd, sweep_dirs, wait_for

pytestmark = pytest.mark.slow

TIMING = {"samples_per_s", "epoch_time_s", "rss_mb", "gpu_peak_mb"}


def train_cmd(outputs, data, run_dir, *extra):
    return [sys.executable, "-m", "hexsweep.train", "debug=tiny", "strength.games=0", "trainer.epochs=3",
            "num_threads=1", "trainer.progress=off", f"paths.outputs={outputs}", f"paths.data={data}",
            f"hydra.run.dir={run_dir}", *extra]


def metrics(job_dir):
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def same_training(a: list[dict], b: list[dict]) -> list[str]:
    """Differences between two runs' metrics, timings aside."""
    if [r["epoch"] for r in a] != [r["epoch"] for r in b]:
        return [f"epochs {[r['epoch'] for r in a]} vs {[r['epoch'] for r in b]}"]
    return [f"epoch {x['epoch']} {k}: {x[k]} vs {y.get(k)}" for x, y in zip(a, b, strict=True)
            for k in x if k not in TIMING and x[k] != y.get(k)]


SLOW = "fault.sleep_s_per_epoch=1"  # a window to interrupt a run in


@pytest.fixture(scope="session")
def whole(tmp_path_factory, data_root, tiny_dataset):
    """The uninterrupted run the interrupted ones must end exactly like (read only)."""

    def build(outputs):
        out = subprocess.run(train_cmd(outputs, data_root, outputs / "run", SLOW), capture_output=True, timeout=300)
        assert out.returncode == 0, out.stderr

    return shared_folder(tmp_path_factory, "whole", build) / "run"


def test_sigterm_saves_the_state_and_resume_ends_exactly_as_an_uninterrupted_run(tmp_path, data_root, whole, spawn):
    slow = SLOW
    cut = tmp_path / "cut"
    proc = spawn(train_cmd(tmp_path, data_root, cut, slow))
    wait_for(lambda: (cut / "metrics.jsonl").exists(), timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped = read_result(cut)
    assert stopped["status"] == "interrupted" and "the training state is in last.pt" in stopped["error"]["message"]
    again = subprocess.run(train_cmd(tmp_path, data_root, cut, slow, "resume=true"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resume: job cut continues after epoch" in again.stdout + again.stderr
    assert same_training(metrics(whole), metrics(cut)) == []  # continued, not duplicated, and exact
    done, base = read_result(cut), read_result(whole)
    assert done["resumed_from_epoch"] >= 1 and done["objective"] == base["objective"]
    assert done["best_epoch"] == base["best_epoch"]


def test_a_changed_config_starts_afresh_and_says_which_keys(tmp_path, data_root, tiny_dataset):
    run = tmp_path / "run"
    assert subprocess.run(train_cmd(tmp_path, data_root, run, "trainer.epochs=1"), capture_output=True,
                          timeout=300).returncode == 0
    again = subprocess.run(train_cmd(tmp_path, data_root, run, "trainer.epochs=2", "optim.lr=0.002", "resume=true"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "starting job run afresh: config changed: optim.lr, trainer.epochs" in again.stdout + again.stderr
    assert [r["epoch"] for r in metrics(run)] == [1, 2] and "resumed_from_epoch" not in read_result(run)


def test_an_interrupted_sweep_job_resumes_mid_training(tmp_path, data_root, tiny_dataset, spawn):
    """Ctrl-C of a sweep, then its resume command: the interrupted job continues from its
    last.pt (every 2 steps here) instead of epoch 0; the completed one is skipped."""
    args = ["trainer.epochs=3,8", "fault.sleep_s_per_epoch=0.5", "trainer.checkpoint_every_steps=2",
            "hydra.launcher.n_jobs=2", "num_threads=1",
            "trainer.max_steps_per_epoch=null"]  # whole epochs: the window to interrupt job 1 in
    proc = spawn(sweep_cmd(tmp_path, data_root, *args))
    wait_for(lambda: running_with_slot(tmp_path, "1"), timeout=120)
    sweep = sweep_dirs(tmp_path)[0]
    wait_for(lambda: read_result(sweep / "0") and read_result(sweep / "0")["status"] == "completed", timeout=180)
    wait_for(lambda: (sweep / "1" / "metrics.jsonl").exists() and
             len((sweep / "1" / "metrics.jsonl").read_text().splitlines()) >= 2, timeout=180)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    epochs_done = len(metrics(sweep / "1"))
    again = subprocess.run(sweep_cmd(tmp_path, data_root, *args, f"hydra.sweep.dir={sweep}", "resume=true"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    r = read_result(sweep / "1")
    assert r["status"] == "completed" and r["resumed_from_epoch"] >= epochs_done - 1 >= 1
    assert [m["epoch"] for m in metrics(sweep / "1")] == list(range(1, r["epochs_run"] + 1))


def test_a_preempted_submitit_job_saves_at_a_step_and_is_requeued_where_it_stopped(tmp_path, data_root, whole,
                                                                                   spawn):
    """Through Hydra's submitit launcher and submitit's local executor: the signal submitit sends
    before a time limit or preemption (USR2) arrives mid-training; the job saves its state at the
    next step, submitit checkpoints and requeues it, and the requeued job continues from last.pt
    to exactly the end of an uninterrupted run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    cmd = [c for c in train_cmd(tmp_path, data_root, whole, SLOW) if not c.startswith("hydra.run.dir=")]
    proc = spawn([*cmd[:3], "-m", *cmd[3:], "hydra/launcher=local", f"hydra.sweep.dir={sweep}"])
    job = sweep / "0"
    wait_for(lambda: (job / "metrics.jsonl").exists(), timeout=180)
    # and the epoch's end has saved last.pt: a signal before that save stops the job at the
    # epoch's end (step 0), which a loaded machine made likely (the epoch-1 write window)
    wait_for(lambda: (job / "last.pt").exists()
             and (job / "last.pt").stat().st_mtime_ns >= (job / "metrics.jsonl").stat().st_mtime_ns, timeout=60)
    first = read_result(job)
    os.kill(first["pid"], signal.SIGUSR2)  # what submitit's local controller sends before a timeout
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    done = read_result(job)
    assert done["status"] == "completed" and done["pid"] != first["pid"]  # a new process: requeued
    assert done["resumed_from_epoch"] >= 1 and done["resumed_from_step"] >= 1  # saved at a step, not an epoch
    assert same_training(metrics(whole), metrics(job)) == []
    assert done["objective"] == read_result(whole)["objective"]


def test_every_job_records_what_ran_and_analyze_diffs_two_jobs(tmp_path, data_root, tiny_dataset):
    out = subprocess.run(sweep_cmd(tmp_path, data_root, "optim.lr=0.001,0.002", "trainer.epochs=1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    sweep = sweep_dirs(tmp_path)[0]
    env = json.loads((sweep / "0" / "env.json").read_text())
    assert env["command"][1:4] == ["-m", "hexsweep.train", "-m"]
    assert env["versions"]["torch"] and env["versions"]["python"] and env["seeds"]["seed"] == 0
    assert len(env["packages_sha256"]) == 64 and (sweep / "packages.txt").read_text().count("==") > 10
    git = env["git"]
    if git["commit"]:  # a git checkout: the diff is kept when the tree is dirty
        assert (sweep / "0" / "git.diff").exists() == bool(git["dirty"])
    assert read_result(sweep / "0")["env"]["packages_sha256"] == env["packages_sha256"]
    diff = subprocess.run([sys.executable, "-m", "hexsweep.analyze", "--diff", str(sweep / "0"), str(sweep / "1")],
                          capture_output=True, text=True, timeout=120)
    assert diff.returncode == 0, diff.stderr
    assert "optim.lr: 0.001 -> 0.002" in diff.stdout and "code: the same" in diff.stdout
    assert "packages: the same" in diff.stdout


def test_a_resumed_trial_reports_each_epoch_once_and_keeps_what_it_had(tmp_path, tiny_cfg):
    """The pruning hook of a job that continues its trial reports only the epochs the trial does
    not have; a run that starts afresh in a trial with reports says which epochs it cannot replace."""
    import optuna

    from hexsweep.search.pruning import trial_hook
    from hexsweep.search.storage import open_storage

    journal = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    study.ask().report(0.5, 1)
    cfg = tiny_cfg("optuna.study_name=s", "optuna.trial_number=0", f"optuna.storage={journal}",
                   "optuna.pruner=none")
    hook, info = trial_hook(cfg, resumed=True)
    assert "earlier_epochs" not in info
    metric = cfg.objective.metric
    assert hook(1, {metric: 0.9}, None) is False and hook(2, {metric: 0.7}, None) is False
    reloaded = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    assert reloaded.trials[0].intermediate_values == {1: 0.5, 2: 0.7}
    _, info = trial_hook(cfg, resumed=False)
    assert info["earlier_epochs"] == [1, 2]


class _FakeSubmititHandler:
    """Stands in for submitit's SignalHandler (same module name): records the call, then exits
    as submitit does once it has requeued."""

    def __init__(self) -> None:
        self.calls = 0

    def checkpoint_and_try_requeue(self, signum, frame) -> None:
        self.calls += 1
        raise SystemExit(99)


_FakeSubmititHandler.__module__ = "submitit.core.job_environment"


def signal_at(epoch, sig, then_sleep_s=0.0):
    """An epoch hook that sends ``sig`` to this process at the end of ``epoch`` (every epoch if
    None), then sleeps (a long evaluation), and never stops training itself."""

    def hook(e, metrics, model):
        if epoch is None or e == epoch:
            os.kill(os.getpid(), sig)
            time.sleep(then_sleep_s)
        return False

    return hook


@pytest.fixture
def under_submitit(tiny_cfg, tiny_dataset, tmp_path, monkeypatch):
    """In-process training with a submitit-like handler on USR2: (run, handler, saves of last.pt)."""
    import torch

    from hexsweep import trainer
    from hexsweep.data.dataset import HexDataset
    from hexsweep.model import HexNet, NetConfig

    handler = _FakeSubmititHandler()
    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGUSR2, handler.checkpoint_and_try_requeue),
                                                    (signal.SIGTERM, signal.SIG_IGN))}
    saves = []
    real_save = trainer.save_checkpoint

    def counting_save(path, *args, **kwargs):
        training = kwargs.get("training") or (args[6] if len(args) > 6 else None)  # a TrainState, or None
        saves.append((path.name, training.step if training is not None else None))
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", counting_save)

    def run(hook, epochs=3):
        cfg = tiny_cfg(f"trainer.epochs={epochs}", "trainer.max_steps_per_epoch=6")
        job = tmp_path / "job"
        job.mkdir(exist_ok=True)
        model = HexNet(NetConfig.from_config(cfg.model, 5))
        return trainer.train(cfg, HexDataset(tiny_dataset, "train"), HexDataset(tiny_dataset, "val"), model,
                             torch.device("cpu"), job, {}, hook)

    yield run, handler, saves
    for s, h in previous.items():
        signal.signal(s, h)


def test_a_preemption_after_the_last_step_is_not_lost(under_submitit):
    from hexsweep.trainer import Stopped

    run, handler, _ = under_submitit
    with pytest.raises(Stopped) as stopped:
        run(signal_at(2, signal.SIGUSR2), epochs=2)  # in the last epoch's hook
    assert handler.calls == 0 and stopped.value.handover is not None  # saved first, handed over by the job
    with pytest.raises(SystemExit):
        stopped.value.handover()
    assert handler.calls == 1


def test_under_submitit_sigterm_saves_at_the_next_step_and_training_goes_on(under_submitit):
    run, handler, saves = under_submitit
    out = run(signal_at(1, signal.SIGTERM), epochs=3)
    assert len(out.history) == 3 and handler.calls == 0
    last = [step for name, step in saves if name == "last.pt"]
    assert last == [0, 1, 0, 0]  # epoch ends, plus one save at step 1 of epoch 2


def test_no_step_boundary_in_time_hands_over_anyway(under_submitit, monkeypatch):
    from hexsweep import trainer

    run, handler, _ = under_submitit
    monkeypatch.setattr(trainer, "PREEMPT_GRACE_S", 1)
    with pytest.raises(SystemExit):
        run(signal_at(None, signal.SIGUSR2, then_sleep_s=5))  # no step boundary within the grace
    assert handler.calls == 1


def test_a_job_submitit_will_not_requeue_ends_failed_saying_why(tmp_path):
    from hexsweep.jobfolder import JobResult
    from hexsweep.lifecycle import hand_over_preemption
    from hexsweep.trainer import Stopped

    def refuse():
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    record = hand_over_preemption(Stopped("stopped by SIGUSR2", refuse), tmp_path, JobResult("interrupted"))
    assert record.status == "failed" and "timed-out too many times" in record.error.message
    assert read_result(tmp_path)["status"] == "failed"


def test_a_resume_starts_afresh_from_any_last_pt_it_cannot_use(tmp_path, data_root, tiny_cfg):
    """Three jobs whose last.pt cannot be used (a folder, a training state without its history, an
    empty model state), beside the temp files of saves killed mid-way: the sweep's resume starts
    each afresh, saying why, completes it, and leaves no temp file."""
    import torch

    from hexsweep.lifecycle import train_job

    args = ["seed=0,1,2", "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "hydra.launcher.n_jobs=2"]
    train_job(tiny_cfg(*args[1:3]), tmp_path / "base")  # a real last.pt to damage
    state = torch.load(tmp_path / "base" / "last.pt", weights_only=True)
    sweep = tmp_path / "sweep"
    for job in ("0", "1", "2"):  # what a kill -9 during a save leaves beside last.pt
        (sweep / job).mkdir(parents=True)
        (sweep / job / ".last.pt.k9x2a1b0.tmp").write_bytes(b"PK\x03\x04 half a zip")
        (sweep / job / ".best.pt.3fz8q0wn.tmp").write_bytes(b"")
    (sweep / "0" / "last.pt").mkdir()
    torch.save({**state, "training": {k: v for k, v in state["training"].items() if k != "history"}},
               sweep / "1" / "last.pt")
    torch.save({**state, "model": {}}, sweep / "2" / "last.pt")

    again = run_sweep(tmp_path, data_root, *args, f"hydra.sweep.dir={sweep}", "resume=true")
    assert again.returncode == 0, again.stderr
    why = {"0": f"{sweep / '0' / 'last.pt'} is a folder, not a checkpoint: moved to {sweep / '0'}/last.pt.unusable-",
           "1": "last.pt's training state lacks history",
           "2": f"{sweep / '2' / 'last.pt'}: its weights do not fit its model_config (Error(s) in loading state_dict"}
    for job, reason in why.items():
        record = read_result(sweep / job)
        assert record["status"] == "completed" and "resumed_from_epoch" not in record, job
        assert f"resume: starting job {job} afresh: {reason}" in (sweep / job / "train.log").read_text()
        assert not list((sweep / job).glob(".*.tmp")), job
        assert torch.load(sweep / job / "last.pt", weights_only=True)["training"]["history"]  # saved anew
