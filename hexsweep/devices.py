"""Device and thread choice for one job. torch is imported only by the functions that need it:
the sweep driver and a plain app's jobs count cores without paying torch's import."""

from __future__ import annotations

import os
import sys
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
    if device.type == "mps":
        return mps_chip_name()
    import platform

    return platform.processor() or platform.machine() or device.type


def mps_chip_name() -> str:
    """The chip whose GPU MPS drives (an Apple GPU has no name of its own): what the seed read from
    ``system_profiler SPDisplaysDataType``; sysctl answers at once, system_profiler in a second."""
    import platform
    import subprocess

    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5, check=True).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return f"Apple GPU ({platform.machine() or 'unknown'})"


#: how torch's MPS allocator words its out-of-memory error (MPSAllocator.mm, a TORCH_CHECK)
MPS_OOM_PREFIX = "MPS backend out of memory"


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory, on any device: CUDA raises
    ``torch.OutOfMemoryError``; MPS raises a plain ``RuntimeError("MPS backend out of memory
    (MPS allocated: ..., other allocations: ..., max allowed: ...)")``, known only by its words.
    (A CPU that runs out of RAM is the kernel's OOM killer: the job is ``crashed``, never here.)"""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and str(exc).lstrip().startswith(MPS_OOM_PREFIX)


def free_cached() -> None:
    """Hand the allocators' cached blocks back after an out-of-memory error, before a retry."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()
