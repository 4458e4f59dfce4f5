"""Samples what this job uses every few seconds into ``resources.jsonl`` and keeps the peaks."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import psutil

from hexsweep.atomic import append_jsonl
from hexsweep.resources import mps
from hexsweep.resources.gpus import gpu_status

log = logging.getLogger(__name__)


class ResourceSampler:
    """A daemon thread: process RSS, CPU %, and on a CUDA slot the GPU's memory and utilisation
    (NVML: the whole GPU, all processes), on MPS what this job holds on the GPU (torch.mps:
    ``driver_allocated_memory``, and its live tensors; Metal gives no utilisation figure)."""

    def __init__(self, path: Path, interval_s: float, gpu_index: int | None, on_mps: bool = False) -> None:
        self.path, self.interval_s, self.gpu_index, self.on_mps = path, interval_s, gpu_index, on_mps
        self.peak_rss_mb = 0.0
        self.peak_gpu_used_mb: float | None = None  # CUDA: the GPU's memory in use, by anyone
        self.peak_gpu_mem_mb: float | None = None  # MPS: this job's own GPU memory
        self.samples = 0
        self.write_error: OSError | None = None  # the first failed write of resources.jsonl
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hexsweep-sampler", daemon=True)

    def __enter__(self) -> ResourceSampler:
        self._proc.cpu_percent(None)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def sample(self) -> dict:
        rss = self._proc.memory_info().rss / 2**20
        row = {"t": time.time(), "rss_mb": rss, "cpu_pct": self._proc.cpu_percent(None)}
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if self.gpu_index is not None and (gpu := gpu_status(self.gpu_index)) is not None:
            row.update(gpu_mem_used_mb=gpu.memory_used_mb, gpu_util_pct=gpu.utilization_pct)
            self.peak_gpu_used_mb = max(self.peak_gpu_used_mb or 0.0, gpu.memory_used_mb)
        if self.on_mps and (m := mps.status()) is not None:
            row.update(mps_allocated_mb=m.driver_allocated_mb, mps_tensors_mb=m.tensors_mb)
            self.peak_gpu_mem_mb = max(self.peak_gpu_mem_mb or 0.0, m.driver_allocated_mb)
        try:
            append_jsonl(self.path, row)
        except OSError as e:
            # the file is a record, the peaks are what the job reports: a full disk or a removed
            # folder must neither end the sampling (its thread would die) nor fail the job
            if self.write_error is None:
                log.warning("resource samples not written to %s: %s; the peaks are still kept", self.path,
                            e.strerror or e)
            self.write_error = e
        self.samples += 1
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s if self.samples else 0):
            self.sample()
