"""Samples what this job uses every few seconds into ``resources.jsonl`` and keeps the peaks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

from hexsweep.atomic import append_jsonl
from hexsweep.resources.gpus import gpu_status


class ResourceSampler:
    """A daemon thread: process RSS, CPU %, and (on a GPU slot) the GPU's memory and utilisation."""

    def __init__(self, path: Path, interval_s: float, gpu_index: int | None) -> None:
        self.path, self.interval_s, self.gpu_index = path, interval_s, gpu_index
        self.peak_rss_mb = 0.0
        self.peak_gpu_used_mb: float | None = None
        self.samples = 0
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
        append_jsonl(self.path, row)
        self.samples += 1
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s if self.samples else 0):
            self.sample()
