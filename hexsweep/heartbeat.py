"""Progress heartbeat: how a job tells the sweep driver that its training still moves.

The hexsweep launcher gives each job a counter in shared memory (``attach``); the training
loop calls ``beat()`` at every step, evaluation batch and strength game, and the driver's
stall watchdog kills a job whose counter has not moved for ``hydra.launcher.stall_timeout_s``.
Only the job's own main thread beats: a helper thread (the resource sampler) would keep
beating while the main thread is frozen in a deadlock, which is the case the watchdog is for.
The one exception is ``busy(limit_s)``: a step that moves nothing the main thread could count
but ends by itself (importing a tracker's client, a store's requests, each bounded by its own
timeout) beats from a helper thread for at most ``limit_s``. Without it a tracker's start-up,
seconds long and tens of seconds on a loaded machine, read as a stall: the watchdog killed a
healthy job before its MLflow run existed.

Outside a hexsweep launcher job (a single run, Ray, Slurm) ``beat()`` does nothing. Any Hydra
app can beat too: ``from hexsweep.heartbeat import beat``; a job that never beat is not
watched unless its app declares that it beats (hexsweep.train does).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

_counter: Any = None  # a multiprocessing RawValue("Q"), set in the job process
BUSY_BEAT_S = 0.2  # well under the driver's 0.5 s poll, so no watch sees a busy job still


def attach(counter: Any) -> None:
    """Called by the job process before the task runs."""
    global _counter
    _counter = counter


def beat() -> None:
    """Record progress: one add in shared memory, no system call."""
    if _counter is not None:
        _counter.value += 1


@contextlib.contextmanager
def busy(limit_s: float) -> Iterator[None]:
    """Beat from a helper thread while the block runs, for at most ``limit_s`` seconds: for a
    finite step that beats nothing itself. A block stuck past the limit stops beating, and the
    watchdog kills it ``stall_timeout_s`` later as any stall."""
    if _counter is None:
        yield
        return
    done = threading.Event()

    end = time.monotonic() + limit_s

    def keep_beating() -> None:
        while not done.wait(BUSY_BEAT_S) and time.monotonic() < end:
            beat()

    helper = threading.Thread(target=keep_beating, name="hexsweep-busy-beat", daemon=True)
    helper.start()
    try:
        yield
    finally:
        done.set()
        helper.join()
