"""Live sweep progress on stderr: jobs done / running / failed and an ETA."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter


class SweepProgress:
    def __init__(self, total: int, parallel: int, interval_s: float, enabled: bool = True) -> None:
        self.total, self.parallel, self.interval_s, self.enabled = total, parallel, interval_s, enabled
        self.start = time.monotonic()
        self.running = 0
        self.statuses: Counter[str] = Counter()
        self.durations: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="hexsweep-progress")

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def finished(self, num: int, status: str, duration_s: float, label: str) -> None:
        with self._lock:
            self.running -= 1
            self.statuses[status] += 1
            if status not in ("skipped",):
                self.durations.append(duration_s)
        self.print(f"job {num} {status} in {duration_s:.1f} s ({label})")

    def skipped(self, num: int, label: str) -> None:
        with self._lock:
            self.statuses["skipped"] += 1
        self.print(f"job {num} already completed, skipped ({label})")

    def line(self) -> str:
        with self._lock:
            done = sum(self.statuses.values())
            bad = sum(v for k, v in self.statuses.items() if k not in ("completed", "pruned", "skipped"))
            remaining = self.total - done
            eta = ""
            if self.durations and remaining:
                mean = sum(self.durations) / len(self.durations)
                seconds = mean * remaining / max(1, self.parallel)
                eta = f", ETA {int(seconds // 60)}:{int(seconds % 60):02d}"
            return (f"[hexsweep] {done}/{self.total} done, {self.running} running, {bad} failed, "
                    f"elapsed {time.monotonic() - self.start:.0f} s{eta}")

    def print(self, event: str = "") -> None:
        if self.enabled:
            prefix = f"{event}\n" if event else ""
            print(f"{prefix}{self.line()}", file=sys.stderr, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.print()
