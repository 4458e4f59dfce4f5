"""Apple's MPS GPU, through ``torch.mps`` (the only library that can ask Metal from Python).

On Apple silicon the GPU has no memory of its own: it allocates from the machine's RAM
(unified memory). Metal says how much of it one process should use at most
(``recommendedMaxWorkingSetSize``, ``torch.mps.recommended_max_memory()``), and torch's MPS
allocator says how much this process holds (``torch.mps.driver_allocated_memory()``:
tensors, its cached pools and MPSGraph's own buffers). No call tells one process what another
process holds on the GPU: that shows only as RAM the machine no longer has available
(psutil). So every figure here is read in the job's own process, never in the sweep driver.

torch is not imported by this module: ``available()`` uses torch only when the process has
already imported it (hexsweep.train's jobs and driver, the probe), or on macOS, so that a plain
app's job on Linux does not pay torch's import to learn that there is no MPS GPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

#: jobs per MPS GPU when ``slots_per_gpu`` is not set (docs/design.md: "Devices" says why 2)
DEFAULT_SLOTS = 2


def _torch() -> Any | None:
    torch = sys.modules.get("torch")
    if torch is None and sys.platform == "darwin":
        import torch
    return torch


def available() -> bool:
    """Whether this process can train on an MPS GPU."""
    torch = _torch()
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(mps is not None and mps.is_available())


@dataclass
class MpsStatus:
    recommended_max_mb: float  # what Metal recommends one process uses at most
    driver_allocated_mb: float  # what this process holds: tensors, cached pools, MPSGraph
    tensors_mb: float  # what this process's live tensors occupy
    ram_available_mb: float  # the machine's RAM not yet used by anyone (the GPU's memory too)


def status() -> MpsStatus | None:
    """This process's view of the MPS GPU, or None without one."""
    if not available():
        return None
    import psutil

    mps = _torch().mps
    return MpsStatus(mps.recommended_max_memory() / 2**20, mps.driver_allocated_memory() / 2**20,
                     mps.current_allocated_memory() / 2**20, psutil.virtual_memory().available / 2**20)


def free_mb(fraction: float | None) -> float | None:
    """GPU memory this process may still allocate: its cap (``fraction`` of Metal's recommended
    maximum, or all of it) less what it holds, and never more than the RAM still available to
    the machine, which other processes' GPU buffers have already taken from."""
    s = status()
    if s is None:
        return None
    cap = s.recommended_max_mb * fraction if fraction else s.recommended_max_mb
    return min(cap - s.driver_allocated_mb, s.ram_available_mb)


def limit(fraction: float) -> None:
    """Cap this process's MPS allocations at ``fraction`` of Metal's recommended maximum: past it,
    the allocator raises "MPS backend out of memory" in this job instead of the machine swapping
    or killing processes when several jobs share the GPU."""
    _torch().mps.set_per_process_memory_fraction(float(fraction))

