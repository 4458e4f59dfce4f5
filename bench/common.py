"""Helpers shared by the benchmark scripts: run a command, time it, follow its processes' memory."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil


def hexsweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hexsweep.train", *args]


class PssWatcher:
    """Peak of the summed PSS (proportional set size) of a process's descendants.

    PSS splits shared pages (the memory-mapped dataset in the page cache) between the
    processes that map them, so the sum is the real memory of the group, unlike RSS.
    """

    def __init__(self, root_pid: int, interval_s: float = 0.1) -> None:
        self.root = psutil.Process(root_pid)
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.peak_jobs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PssWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total, jobs = 0.0, 0
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                break
            for p in children:
                try:
                    total += p.memory_full_info().pss / 2**20
                    jobs += 1
                except psutil.Error:
                    continue
            if total > self.peak_mb:
                self.peak_mb, self.peak_jobs = total, jobs
            time.sleep(self.interval_s)


def run_timed(cmd: list[str], watch_memory: bool = False, cwd: str | None = None,
              env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak summed PSS of the descendants (MB), stderr tail."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    peak = 0.0
    if watch_memory:
        with PssWatcher(proc.pid) as w:
            _, err = proc.communicate()
        peak = w.peak_mb
    else:
        _, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return wall, peak, err[-500:]
