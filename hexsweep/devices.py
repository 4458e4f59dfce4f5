"""Device and thread choice for one job. torch is imported only by the functions that need it:
the sweep driver and a plain app's jobs count cores without paying torch's import."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hexsweep.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    import torch
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r} is not available: this machine has no CUDA GPU")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={spec!r} is not available: allowed cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"device={spec!r} is not available on this machine")
    return device


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def device_name(device: torch.device) -> str:
    """What the device is, for the record: the GPU's name, or the CPU's model."""
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or device.type
