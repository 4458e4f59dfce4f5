"""Fault injection (``fault.*`` keys): real failures on demand, to test the sweep machinery."""

from __future__ import annotations

import signal
import time
from typing import Any

import torch

from hexsweep.trainer import EpochHook


class InjectedFault(RuntimeError):
    """Raised by ``fault.raise_at_epoch``."""


def check_batch_size(cfg: Any) -> None:
    limit = cfg.fault.oom_above_batch_size
    if limit is not None and cfg.batch_size > limit:
        raise torch.OutOfMemoryError(
            f"out of memory at batch_size={cfg.batch_size} (injected: fault.oom_above_batch_size={limit})")


def poison(model: torch.nn.Module) -> None:
    """Make the weights NaN for real, so every later loss and metric is NaN."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))


def before_training(cfg: Any, model: torch.nn.Module) -> None:
    check_batch_size(cfg)
    if cfg.fault.nan_at_epoch is not None and cfg.fault.nan_at_epoch <= 1:
        poison(model)


def hang() -> None:
    """Block for ever, deaf to SIGINT and SIGTERM and beating no heartbeat: what a job stuck
    in a deadlock looks like to the sweep driver (only SIGKILL ends it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(3600)


def fault_hook(cfg: Any, then: EpochHook | None = None) -> EpochHook | None:
    """Chain the configured faults in front of ``then`` (the pruning hook, if any)."""
    f = cfg.fault
    hang_at = f.hang_at_epoch
    if f.raise_at_epoch is None and f.nan_at_epoch is None and not f.sleep_s_per_epoch and hang_at is None:
        return then

    def hook(epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        if hang_at is not None and epoch >= hang_at:
            hang()
        if f.sleep_s_per_epoch:
            time.sleep(f.sleep_s_per_epoch)
        if f.raise_at_epoch is not None and epoch >= f.raise_at_epoch:
            raise InjectedFault(f"injected failure at epoch {epoch} (fault.raise_at_epoch)")
        if f.nan_at_epoch is not None and epoch + 1 == f.nan_at_epoch:
            poison(model)  # the next epoch's metrics come out NaN
        return then(epoch, metrics, model) if then is not None else False

    return hook
