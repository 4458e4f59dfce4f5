"""The life of one training job, from its config to its job folder (the job layer).

``train_job`` trains per the config and fills the job folder (hexsweep/jobfolder.py): it
takes its resources (resources/assign.py), continues from ``last.pt`` where asked, generates or
opens the dataset, trains (trainer.py), measures strength and writes ``result.json``.
``train_job_recorded`` never raises: a failure is classified (failed, oom, interrupted) and
recorded in the folder, an out-of-memory job may run once more at half the batch size, and a
job stopped by submitit's preemption signal is handed over to submitit's requeue. The entry
point (train.py) holds only ``@hydra.main`` and the command line around it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from hexsweep import faults, provenance
from hexsweep.atomic import write_jsonl
from hexsweep.cli import first_line
from hexsweep.config import validate
from hexsweep.data.dataset import HexDataset
from hexsweep.data.generate import ensure_dataset
from hexsweep.devices import device_name, free_cached, is_oom, resolve_device
from hexsweep.errors import HexsweepError
from hexsweep.evaluate import strength_report
from hexsweep.hex.board import EMPTY
from hexsweep.jobfolder import (
    COMPLETED,
    CORRUPT,
    FAILED,
    INTERRUPTED,
    METRICS_FILE,
    OOM,
    PRUNED,
    RUNNING,
    JobError,
    JobFolder,
    JobResult,
    Objective,
    read_result,
    sibling_results,
)
from hexsweep.model import HexNet, NetConfig, count_parameters
from hexsweep.resources.admission import job_signature
from hexsweep.resources.job import job_resources, parallel_jobs
from hexsweep.tracking import tracked
from hexsweep.trainer import EpochHook, Resume, Stopped, TrainOutcome, evaluate, load_training_state, train

log = logging.getLogger("hexsweep.train")

#: (cfg, resumed) -> (epoch hook, what result.json records of the trial), or (None, None)
TrialLink = Callable[[DictConfig, bool], tuple[EpochHook | None, dict[str, Any] | None]]


class NonFiniteObjective(HexsweepError):
    """No epoch produced a finite objective (diverged training)."""


def uniform_policy_accuracy(data: HexDataset) -> float:
    """Top-1 accuracy of a uniform guess over legal cells, on positions with a policy target."""
    boards, moves = data.field("boards"), data.field("move")
    legal = (boards.reshape(len(boards), -1) == EMPTY).sum(axis=1)
    mask = (moves >= 0) & (legal > 0)
    return float(np.mean(1.0 / legal[mask])) if mask.any() else float("nan")


def job_info(cfg: DictConfig) -> dict[str, Any]:
    """Identity of this job from Hydra (``JobResult`` fields): number, overrides (the key of a sweep row)."""
    info: dict[str, Any] = {"experiment": cfg.experiment_name, "batch_size": cfg.batch_size}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        info["job"] = {"name": hc.job.name, "num": hc.job.get("num"),
                       "override_dirname": hc.job.override_dirname}
        info["overrides"] = list(hc.overrides.task)
        info["multirun"] = hc.mode == RunMode.MULTIRUN
    return info


def _launcher_cfg() -> Any:
    return HydraConfig.get().launcher if HydraConfig.initialized() else None


def train_job(cfg: DictConfig, job_dir: Path, on_epoch_end: EpochHook | None = None,
              info: dict[str, Any] | None = None, link_trial: TrialLink | None = None) -> JobResult:
    """Train per ``cfg`` and fill ``job_dir``; returns its result.json. Raises on failure.
    ``link_trial(cfg, resumed)``: the epoch hook of the Optuna trial this job reports to, and what
    result.json records of it (the entry point passes search/pruning.py's ``trial_hook``)."""
    start = time.perf_counter()
    info = info or {}
    folder = JobFolder(job_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    state = _saved_state(cfg, job_dir, plain)
    record = folder.start(JobResult(RUNNING, **info), keep_metrics=state is not None)
    if state is not None:
        t = state.training
        # metrics.jsonl continues: exactly the epochs the saved state had finished, no duplicates
        write_jsonl(job_dir / METRICS_FILE, t.history)
        record.update(resumed_from_epoch=t.epoch - 1, resumed_from_step=t.step)
    record.update(config=plain, signature=job_signature(cfg))
    if cfg.optuna.storage:
        _redact_storage(record)
    validate(cfg)
    in_sweep = bool(info.get("multirun"))
    describe = {"experiment": cfg.experiment_name, "overrides": info.get("overrides", [])}
    with job_resources(cfg, job_dir, in_sweep, parallel_jobs(_launcher_cfg()), describe,
                       lambda: sibling_results(job_dir.parent)) as res, \
            tracked(cfg, job_dir, record, res.slot.name if res.slot else None) as tracker:
        threads = res.threads  # torch's, set by resources/assign.py (num_threads, else this job's share)
        torch.manual_seed(cfg.seed)
        device = resolve_device(res.device)
        record.update(device=str(device), num_threads=threads, slot=res.slot.name if res.slot else None,
                      slot_acquired_at=res.acquired_at, waited_s=res.waited_s,
                      env=provenance.record(job_dir, info.get("overrides", []),
                                            {"seed": cfg.seed, "data.seed": cfg.data.seed}, str(device),
                                            device_name(device)))
        folder.update(record)
        data_dir, meta = ensure_dataset(cfg.data, cfg.paths.data, workers=cfg.data.workers or threads)
        train_data = HexDataset(data_dir, "train", cfg.data.board_size)
        val_data = HexDataset(data_dir, "val", cfg.data.board_size)
        model = HexNet(NetConfig.from_config(cfg.model, meta["board_size"]))
        record.update(data={"folder": str(data_dir), "board_size": meta["board_size"],
                            "train_positions": len(train_data), "val_positions": len(val_data),
                            "uniform_policy_acc": uniform_policy_accuracy(val_data)},
                      model={"name": cfg.model.name, "parameters": count_parameters(model)})
        faults.before_training(cfg, model)
        pruning_hook, trial_info = link_trial(cfg, state is not None) if link_trial else (None, None)
        if trial_info:
            record.optuna = trial_info
        hook = faults.fault_hook(cfg, on_epoch_end or pruning_hook)
        outcome = train(cfg, train_data, val_data, model, device, job_dir, plain, hook, tracker, resume=state)
        _record_training(record, cfg, outcome, model, val_data, device)
        strength = strength_report(model, meta["board_size"], cfg.strength.games,
                                   cfg.data.temperature, device, cfg.seed)
        res.sampler.sample()
        # CUDA: torch's peak allocation; MPS: the most the job held, as its sampler saw it
        peak_gpu = outcome.peak_gpu_mem_mb if outcome.peak_gpu_mem_mb is not None else res.sampler.peak_gpu_mem_mb
        record.update(status=PRUNED if outcome.stopped_by_hook else COMPLETED, strength=strength,
                      wall_time_s=time.perf_counter() - start,
                      peak_rss_mb=max(outcome.peak_rss_mb, res.sampler.peak_rss_mb), peak_gpu_mem_mb=peak_gpu,
                      peak_gpu_used_mb=res.sampler.peak_gpu_used_mb, error=None)
    folder.finish(record)
    return record


def _saved_state(cfg: DictConfig, job_dir: Path, plain: dict) -> Resume | None:
    """The training state in last.pt to continue from, when asked (resume, a requeued job) and when it
    holds this config's training state; else None, saying why."""
    if not (cfg.resume or requeued()):
        return None
    state, why = load_training_state(job_dir, plain)
    if state is None:
        log.info("resume: starting job %s afresh: %s", job_dir.name, why)
    else:
        t = state.training
        log.info("resume: job %s continues after epoch %d%s", job_dir.name, t.epoch - 1,
                 f", step {t.step} of epoch {t.epoch}" if t.step else "")
    return state


def _record_training(record: JobResult, cfg: DictConfig, outcome: TrainOutcome, model: HexNet,
                     val_data: HexDataset, device: torch.device) -> None:
    """What the training gave: the objective at the best epoch, the best and last epochs' metrics.
    Raises NonFiniteObjective when no epoch had a finite objective."""
    if outcome.history:
        final = outcome.history[-1]
        best = outcome.best_metrics or final
    else:  # zero epochs: the untrained model is both
        best = final = evaluate(model.to(device), val_data, cfg.trainer.eval_batch_size, device,
                                (cfg.loss.policy_weight, cfg.loss.value_weight),
                                (cfg.objective.policy_weight, cfg.objective.value_weight),
                                lambda: torch.autocast(device.type, enabled=False))
    metric = cfg.objective.metric
    value = best.get(metric, float("nan"))
    record.update(objective=Objective(metric, cfg.objective.direction, value),
                  best_epoch=outcome.best_epoch, best=best, final=final, epochs_run=len(outcome.history),
                  stopped_early=outcome.stopped_early, restored_best=outcome.restored_best,
                  pruned_at_epoch=len(outcome.history) if outcome.stopped_by_hook else None)
    if not math.isfinite(value) and outcome.history:
        raise NonFiniteObjective(f"objective {metric} is {value} in every epoch (training diverged)")


def requeued() -> bool:
    """A job that submitit (Slurm, or its local executor) runs: when its scheduler preempts or
    times it out, Hydra's submitit launcher requeues the same job, which must continue from its
    last.pt rather than start again."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def _redact_storage(record: JobResult) -> None:
    """A storage URL's password never reaches result.json."""
    from hexsweep.secrets import redact

    assert record.config is not None
    record.config["optuna"]["storage"] = redact(record.config["optuna"]["storage"])
    record.overrides = [redact(o) if o.startswith("optuna.storage=") else o for o in record.overrides or []]


def classify_failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if is_oom(exc):  # CUDA's OutOfMemoryError, and MPS's RuntimeError
        return OOM
    return FAILED


def record_failure(job_dir: Path, exc: BaseException, info: dict[str, Any]) -> JobResult:
    folder = JobFolder(job_dir)
    folder.write_error(exc)
    record = read_result(job_dir)
    if record is None or record.status == CORRUPT:
        record = JobResult(FAILED)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    record.update(**info, status=classify_failure(exc), error=JobError(type(exc).__name__, message))
    folder.finish(record)
    return record


def train_job_recorded(cfg: DictConfig, job_dir: Path, on_epoch_end: EpochHook | None = None,
                       link_trial: TrialLink | None = None) -> JobResult:
    """``train_job`` that never raises: a failure is recorded in the job folder and returned.

    With ``retry_on_oom`` an out-of-memory job runs once more at half the batch size; its
    row then carries ``oom_batch_size`` (the size that failed) and ``retried: true``.
    """
    info = job_info(cfg)
    try:
        return train_job(cfg, job_dir, on_epoch_end, info, link_trial)
    except (Exception, KeyboardInterrupt) as exc:
        record = hand_over_preemption(exc, job_dir, record_failure(job_dir, exc, info))
        if record.status != OOM or not cfg.retry_on_oom or cfg.batch_size < 2:
            return record
    free_cached()
    failed_size = cfg.batch_size
    with open_dict(cfg):
        cfg.batch_size = failed_size // 2
    log.warning("out of memory at batch_size=%d; retrying once at %d", failed_size, cfg.batch_size)
    info = {**job_info(cfg), "oom_batch_size": failed_size, "retried": True}
    try:
        return train_job(cfg, job_dir, on_epoch_end, info, link_trial)
    except (Exception, KeyboardInterrupt) as exc:
        return hand_over_preemption(exc, job_dir, record_failure(job_dir, exc, info))


def hand_over_preemption(exc: BaseException, job_dir: Path, record: JobResult) -> JobResult:
    """A job that submitit's preemption (or time-limit) signal stopped, with its training state
    saved and its folder marked interrupted: now submitit's own handler checkpoints the job
    (Hydra's submitit launcher resubmits it as it is) and requeues it; it exits this process
    (SystemExit). The requeued job continues from last.pt (``requeued``). When submitit will not
    requeue it (timed out too many times, a failed ``scontrol requeue``), the job ends failed,
    saying why, and the sweep goes on."""
    handover = getattr(exc, "handover", None)
    if not isinstance(exc, Stopped) or handover is None:
        return record
    log.warning("preempted: training state saved in last.pt; submitit requeues this job")
    try:
        handover()
    except Exception as e:  # submitit's UncompletedJobError and what its requeue command raises
        record.update(status=FAILED, error=JobError(type(e).__name__,
                                                    f"preempted and not requeued: {first_line(str(e))}"))
        JobFolder(job_dir).finish(record)
    return record


def enter_launch_dir(launch_dir: str) -> None:
    """Run in the directory the sweep was started from, as ``hydra.job.chdir=false`` promises.

    Ray workers start in the directory of ``ray start``, Slurm jobs wherever sbatch puts
    them: relative paths (the data, the slot locks, the Optuna journal) must mean the same
    files as in the driver. Needs the same paths on every node (a shared file system)."""
    if os.getcwd() == launch_dir:
        return
    try:
        os.chdir(launch_dir)
    except OSError as e:
        log.warning("cannot enter the launch directory %s on %s (%s); relative paths are taken from %s",
                    launch_dir, socket.gethostname(), e.strerror, os.getcwd())


def anchor_paths(cfg: DictConfig, launch_dir: str) -> None:
    """Make relative ``paths.*``, ``data.path`` and ``resources.lock_dir`` absolute under the launch
    directory, for a job that runs in its own folder (``hydra.job.chdir=true``); otherwise each
    job would get its own slot pool and its own copy of the dataset."""
    with open_dict(cfg):
        for node, key in [(cfg.paths, k) for k in list(cfg.paths)] + [(cfg.data, "path"), (cfg.resources, "lock_dir")]:
            value = node[key]
            if value and not os.path.isabs(str(value)):
                node[key] = os.path.normpath(os.path.join(launch_dir, str(value)))
