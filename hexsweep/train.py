"""Train one model: ``python -m hexsweep.train [overrides]`` (``-m`` for a sweep).

compose (Hydra) -> validate -> dataset (generated once, memory-mapped) + model -> trainer
-> job folder (hexsweep/jobfolder.py). ``main`` returns the objective so that Hydra
sweepers can optimise it; a failed job returns NaN in a sweep and exits non-zero alone.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hexsweep.cli import CONF_DIR, compose, fail
from hexsweep.config import register_schema, validate
from hexsweep.data.dataset import HexDataset
from hexsweep.data.generate import ensure_dataset
from hexsweep.devices import resolve_device, usable_cores
from hexsweep.errors import HexsweepError
from hexsweep.evaluate import strength_report
from hexsweep.hex.board import EMPTY
from hexsweep.jobfolder import JobFolder
from hexsweep.model import HexNet, NetConfig, count_parameters
from hexsweep.trainer import EpochHook, evaluate, train

log = logging.getLogger("hexsweep.train")
register_schema()


def uniform_policy_accuracy(data: HexDataset) -> float:
    """Top-1 accuracy of a uniform guess over legal cells, on positions with a policy target."""
    boards, moves = data.field("boards"), data.field("move")
    legal = (boards.reshape(len(boards), -1) == EMPTY).sum(axis=1)
    mask = (moves >= 0) & (legal > 0)
    return float(np.mean(1.0 / legal[mask])) if mask.any() else float("nan")


def job_info(cfg: DictConfig) -> dict[str, Any]:
    """Identity of this job from Hydra: number, overrides (the key of a sweep row)."""
    info: dict[str, Any] = {"experiment": cfg.experiment_name}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        info["job"] = {"name": hc.job.name, "num": hc.job.get("num"),
                       "override_dirname": hc.job.override_dirname}
        info["overrides"] = list(hc.overrides.task)
        info["multirun"] = hc.mode == RunMode.MULTIRUN
    return info


def run_job(cfg: DictConfig, job_dir: Path, on_epoch_end: EpochHook | None = None,
            info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train per ``cfg`` and fill ``job_dir``; returns result.json's content. Raises on failure."""
    start = time.perf_counter()
    folder = JobFolder(job_dir)
    record = folder.start(info or {})
    plain = OmegaConf.to_container(cfg, resolve=True)
    record["config"] = plain
    validate(cfg)
    threads = cfg.num_threads or usable_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data_dir, meta = ensure_dataset(cfg.data, cfg.paths.data, workers=cfg.data.workers or threads)
    train_data = HexDataset(data_dir, "train", cfg.data.board_size)
    val_data = HexDataset(data_dir, "val", cfg.data.board_size)
    model = HexNet(NetConfig.from_config(cfg.model, meta["board_size"]))
    record.update({
        "device": str(device),
        "num_threads": threads,
        "data": {"folder": str(data_dir), "board_size": meta["board_size"],
                 "train_positions": len(train_data), "val_positions": len(val_data),
                 "uniform_policy_acc": uniform_policy_accuracy(val_data)},
        "model": {"name": cfg.model.name, "parameters": count_parameters(model)},
    })
    outcome = train(cfg, train_data, val_data, model, device, job_dir, plain, on_epoch_end)
    if outcome.history:
        best, final = outcome.best_metrics, outcome.history[-1]
    else:  # zero epochs: the untrained model is both
        def autocast():
            return torch.autocast(device.type, enabled=False)
        best = final = evaluate(model.to(device), val_data, cfg.trainer.eval_batch_size, device,
                                (cfg.loss.policy_weight, cfg.loss.value_weight),
                                (cfg.objective.policy_weight, cfg.objective.value_weight),
                                autocast)
    metric = cfg.objective.metric
    if metric not in best:  # train_* metric with zero epochs
        best = final = {**best, metric: float("nan")}
    strength = strength_report(model, meta["board_size"], cfg.strength.games,
                               cfg.data.temperature, device, cfg.seed)
    record.update({
        "status": "pruned" if outcome.stopped_by_hook else "completed",
        "objective": {"metric": metric, "direction": cfg.objective.direction,
                      "value": best[metric]},
        "best_epoch": outcome.best_epoch,
        "best": best,
        "final": final,
        "epochs_run": len(outcome.history),
        "stopped_early": outcome.stopped_early,
        "restored_best": outcome.restored_best,
        "strength": strength,
        "wall_time_s": time.perf_counter() - start,
        "peak_rss_mb": outcome.peak_rss_mb,
        "peak_gpu_mem_mb": outcome.peak_gpu_mem_mb,
        "error": None,
    })
    folder.finish(record)
    return record


def classify_failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, torch.OutOfMemoryError):
        return "oom"
    return "failed"


def run_job_recorded(cfg: DictConfig, job_dir: Path, on_epoch_end: EpochHook | None = None
                     ) -> dict[str, Any]:
    """``run_job`` that never raises: a failure is recorded in the job folder and returned."""
    info = job_info(cfg)
    try:
        return run_job(cfg, job_dir, on_epoch_end, info)
    except (Exception, KeyboardInterrupt) as exc:
        folder = JobFolder(job_dir)
        folder.write_error(exc)
        from hexsweep.jobfolder import read_result

        record = read_result(job_dir) or {}
        record.update(info)
        record.update({
            "status": classify_failure(exc),
            "error": {"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0]
                      if str(exc).strip() else type(exc).__name__},
            "batch_size": cfg.batch_size,
        })
        folder.finish(record)
        return record


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:
        try:
            validate(cfg)
        except HexsweepError as e:
            fail(str(e))
    record = run_job_recorded(cfg, job_dir)
    status = record["status"]
    if status not in ("completed", "pruned"):
        message = f"job {status}: {record['error']['type']}: {record['error']['message']}"
        if multirun:
            log.error("%s (%s)", message, job_dir)
            return float("nan")
        print(f"hexsweep: {message}\n  full traceback: {job_dir / 'error.txt'}", file=sys.stderr)
        raise SystemExit(130 if status == "interrupted" else 1)
    value = record["objective"]["value"]
    log.info("%s: %s = %.4f (best epoch %s of %d) -> %s", record["experiment"],
             record["objective"]["metric"], value, record["best_epoch"], record["epochs_run"],
             job_dir)
    return float(value) if value is not None else math.nan


def precheck_argv(argv: list[str]) -> None:
    """Fail fast, in one line, on overrides of a single run that Hydra would reject verbosely."""
    if any(a in ("-m", "--multirun") for a in argv) or any(a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if "=" in a and not a.startswith("hydra")]
    try:
        compose(overrides)
    except HexsweepError as e:
        fail(str(e))


def cli_main() -> None:
    precheck_argv(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli_main()
