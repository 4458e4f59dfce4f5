"""Memory admission: do not start a job on a slot that cannot hold it; wait instead.

What a job needs is configured (``resources.gpu_mem_mb``, ``resources.ram_mb``) or learned:
the largest peak recorded by finished jobs of the same sweep with the same model, board
size and batch size (their results, which the caller reads through hexsweep/jobfolder.py),
plus a margin. With neither, the job starts.

Where the memory is: CUDA's is the GPU's own (NVML says what is free, for all processes);
MPS's is the machine's RAM (unified memory): a job on MPS needs its RAM and its GPU memory
from the same available RAM, and its GPU share is capped in its own process (resources/mps.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from hexsweep.errors import HexsweepError
from hexsweep.heartbeat import beat
from hexsweep.jobfolder import COMPLETED, JobResult
from hexsweep.resources import mps
from hexsweep.resources.gpus import gpu_status

log = logging.getLogger(__name__)
MARGIN = 1.15


class AdmissionTimeout(HexsweepError):
    """The memory a job needs did not become free in time."""


@dataclass
class Need:
    ram_mb: float | None
    gpu_mem_mb: float | None
    source: str


def job_signature(cfg: Any) -> dict[str, Any]:
    """What decides a job's memory: the model shape, the board, the batch size, the device."""
    m = cfg.model
    return {"model": [m.channels, m.stages, m.blocks_per_stage, bool(m.downsample), m.head],
            "board_size": cfg.data.board_size, "batch_size": cfg.batch_size}


def learned_need(finished: Iterable[JobResult], signature: dict[str, Any]) -> Need | None:
    """From the results of the sweep's finished jobs (read by hexsweep/jobfolder.py, which owns
    result.json): the largest peaks of completed jobs with the same signature, plus a margin."""
    ram, gpu, seen = 0.0, 0.0, 0
    for r in finished:
        if r.status != COMPLETED or r.signature != signature:
            continue
        seen += 1
        ram = max(ram, r.peak_rss_mb or 0.0)
        gpu = max(gpu, r.peak_gpu_mem_mb or 0.0)
    if not seen:
        return None
    return Need(ram * MARGIN if ram else None, gpu * MARGIN if gpu else None,
                f"learned from {seen} finished job(s) of this sweep")


def probed_need(outputs: Path, signature: dict[str, Any], device_type: str) -> Need | None:
    """The peak that ``python -m hexsweep.probe`` measured for this model and batch size."""
    try:
        probe = json.loads((outputs / "probe" / "latest.json").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(probe, dict):
        return None
    shape = {k: v for k, v in signature.items() if k != "batch_size"}
    if probe.get("signature") != shape or str(probe.get("device", "")).partition(":")[0] != device_type:
        return None
    on_gpu = device_type != "cpu"
    rows = probe.get("batch_sizes")
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue  # a hand-edited file: what is not a probe row is skipped
        peak = row.get("peak_mem_mb")
        if row.get("batch_size") == signature["batch_size"] and row.get("status") == "ok" \
                and isinstance(peak, int | float) and not isinstance(peak, bool):
            peak = peak * MARGIN
            return Need(None, peak, "from the probe") if on_gpu else Need(peak, None, "from the probe")
    return None


def required(cfg: Any, finished: Iterable[JobResult] | None, signature: dict[str, Any],
             device_type: str = "cpu") -> Need | None:
    """Configured, else learned from the finished jobs of this sweep, else from the last probe
    on the same kind of device (``device_type``: cuda, mps or cpu)."""
    res = cfg.resources
    if res.ram_mb is not None or res.gpu_mem_mb is not None:
        return Need(res.ram_mb, res.gpu_mem_mb, "configured")
    learned = learned_need(finished, signature) if finished is not None else None
    return learned or probed_need(Path(cfg.paths.outputs), signature, device_type)


def shortfall(need: Need, gpu_index: int | None, mps_fraction: float | None = None) -> str | None:
    """Why the job does not fit right now, or None if it fits. ``gpu_index``: its CUDA GPU;
    ``mps_fraction``: its share of the MPS GPU (the job runs on MPS)."""
    avail = psutil.virtual_memory().available / 2**20
    if need.ram_mb is not None and avail < need.ram_mb:
        return f"needs {need.ram_mb:.0f} MB RAM, {avail:.0f} MB available"
    if mps_fraction is not None:
        return _mps_shortfall(need, avail, mps_fraction)
    if need.gpu_mem_mb is not None and gpu_index is not None:
        status = gpu_status(gpu_index)
        if status is not None and status.memory_free_mb < need.gpu_mem_mb:
            return f"needs {need.gpu_mem_mb:.0f} MB on GPU {gpu_index}, {status.memory_free_mb:.0f} MB free"
    return None


def _mps_shortfall(need: Need, avail: float, fraction: float) -> str | None:
    """On MPS the GPU's memory is the RAM: what the job may still allocate under its cap, and at
    most what the machine has available; its RAM and GPU needs come out of the same RAM.
    (Whether a job's peak RSS already counts its Metal buffers is untested on a Mac; adding the
    two can only make it wait longer, never start a job that does not fit.)"""
    if need.gpu_mem_mb is None:
        return None
    free = mps.free_mb(fraction)
    if free is not None and free < need.gpu_mem_mb:
        return f"needs {need.gpu_mem_mb:.0f} MB on the MPS GPU, {free:.0f} MB free for this job"
    both = need.gpu_mem_mb + (need.ram_mb or 0.0)
    if need.ram_mb is not None and avail < both:
        return f"needs {both:.0f} MB of unified memory (RAM + MPS), {avail:.0f} MB available"
    return None


def wait_for_memory(need: Need | None, gpu_index: int | None, timeout_s: float, poll_s: float = 2.0,
                    mps_fraction: float | None = None) -> float:
    """Block until the job fits; returns seconds waited. Logs why it waits, every 30 s."""
    if need is None:
        return 0.0
    start, next_notice = time.monotonic(), 0.0
    while (why := shortfall(need, gpu_index, mps_fraction)) is not None:
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise AdmissionTimeout(f"waited {waited:.0f} s for memory: {why} ({need.source})")
        if waited >= next_notice:
            log.warning("waiting for memory before starting: %s (%s)", why, need.source)
            next_notice = waited + 30
        beat()  # waiting is not stalling
        time.sleep(poll_s)
    return time.monotonic() - start
