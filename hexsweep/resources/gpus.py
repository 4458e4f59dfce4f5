"""GPU facts through NVML (nvidia-ml-py), never through CUDA.

The sweep driver must not initialise CUDA: its job processes are forked from it, and a
forked child cannot use a CUDA context made by its parent. NVML has no such limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

try:  # nvidia-ml-py is a dependency, but NVML itself exists only where a driver is installed
    import pynvml
except ImportError:  # pragma: no cover
    pynvml = None


@dataclass
class GpuStatus:
    index: int
    name: str
    memory_total_mb: float
    memory_used_mb: float
    memory_free_mb: float
    utilization_pct: float


def _init() -> bool:
    if pynvml is None:
        return False
    try:
        pynvml.nvmlInit()
        return True
    except pynvml.NVMLError:
        return False


def _uuids() -> list[str]:
    """UUID of each GPU, by NVML index ([] if NVML cannot say)."""
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            out.append(uuid.decode() if isinstance(uuid, bytes) else uuid)
        return out
    except pynvml.NVMLError:
        return []


def visible_indices(count: int) -> list[int]:
    """NVML indices of the GPUs this process may use, in CUDA's order (honours
    CUDA_VISIBLE_DEVICES of numbers and of GPU UUIDs or their unique prefixes, as CUDA does)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    uuids: list[str] | None = None
    out = []
    for part in visible.split(","):
        part = part.strip()
        if part.isdigit() and int(part) < count:
            out.append(int(part))
            continue
        if part.startswith("GPU-"):
            uuids = _uuids() if uuids is None else uuids
            matches = [i for i, u in enumerate(uuids) if u.startswith(part)]
            if len(matches) == 1:
                out.append(matches[0])
                continue
        break  # CUDA stops at the first invalid entry (MIG instances are not mapped here)
    return out


def slot_keys() -> dict[int, str]:
    """CUDA index in this process -> what names that GPU in slot lock files: a prefix of its
    UUID. Not the index: Ray and Slurm show each job its GPU as cuda:0, and under Slurm's
    device cgroups NVML numbers a job's GPUs from 0 as well."""
    if not _init():
        return {}
    uuids = _uuids()
    try:
        indices = visible_indices(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return {}
    return {cuda: uuids[nvml].removeprefix("GPU-")[:8] for cuda, nvml in enumerate(indices) if nvml < len(uuids)}


def gpu_count() -> int:
    if not _init():
        return 0
    try:
        return len(visible_indices(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError:
        return 0


def gpu_status(cuda_index: int) -> GpuStatus | None:
    """Status of the GPU that CUDA calls ``cuda:<cuda_index>`` in this process, or None."""
    if not _init():
        return None
    try:
        indices = visible_indices(pynvml.nvmlDeviceGetCount())
        handle = pynvml.nvmlDeviceGetHandleByIndex(indices[cuda_index])
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        return GpuStatus(cuda_index, name.decode() if isinstance(name, bytes) else name,
                         mem.total / 2**20, mem.used / 2**20, mem.free / 2**20, float(util.gpu))
    except (pynvml.NVMLError, IndexError):
        return None


def all_gpu_status() -> list[GpuStatus]:
    return [s for i in range(gpu_count()) if (s := gpu_status(i)) is not None]
