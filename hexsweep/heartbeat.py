"""Progress heartbeat: how a job tells the sweep driver that its training still moves.

The hexsweep launcher gives each job a counter in shared memory (``attach``); the training
loop calls ``beat()`` at every step, evaluation batch and strength game, and the driver's
stall watchdog kills a job whose counter has not moved for ``hydra.launcher.stall_timeout_s``.
Only the job's own main thread beats: a helper thread (the resource sampler) would keep
beating while the main thread is frozen in a deadlock, which is the case the watchdog is for.

Outside a hexsweep launcher job (a single run, Ray, Slurm) ``beat()`` does nothing. Any Hydra
app can beat too: ``from hexsweep.heartbeat import beat``; a job that never beat is not
watched unless its app declares that it beats (hexsweep.train does).
"""

from __future__ import annotations

from typing import Any

_counter: Any = None  # a multiprocessing RawValue("Q"), set in the job process


def attach(counter: Any) -> None:
    """Called by the job process before the task runs."""
    global _counter
    _counter = counter


def beat() -> None:
    """Record progress: one add in shared memory, no system call."""
    if _counter is not None:
        _counter.value += 1
