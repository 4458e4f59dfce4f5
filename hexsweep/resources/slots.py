"""Slots: the unit of parallelism. A job holds one slot for its whole life.

A slot is a lock file in one lock directory under the outputs root, held with
``fcntl.flock``: the kernel releases it when the holding process dies, however it dies
(SIGKILL and the OOM killer included), so a slot never leaks. Every sweep on the machine
that uses the same outputs root draws from the same pool, so two sweeps started side by
side share the GPUs instead of both starting on GPU 0.

- GPU slots: ``gpu<i>-<k>.lock`` for GPU i and k < slots_per_gpu; the job trains on
  ``torch.device("cuda", i)`` (an explicit device: CUDA_VISIBLE_DEVICES is read once per
  process and cannot move a job to another GPU). Where NVML gives the GPU's UUID, the lock is
  ``gpu-<uuid prefix>-<k>.lock`` instead: Ray and Slurm hide all but the assigned GPU from a
  job, so two jobs both see their GPU as ``cuda:0`` while holding different GPUs.
- MPS slots (Apple's GPU, one per machine): ``mps-<k>.lock`` for k < slots_per_gpu; the job
  trains on ``mps`` and caps its share of the GPU's memory (resources/assign.py).
- CPU slots (no GPU, or device=cpu): ``cpu-<k>.lock`` for k < the pool size (the sweep's
  number of parallel jobs); each job sets ``torch.set_num_threads(cores // pool size)``
  so the parallel jobs together use the cores without oversubscription.

The holder writes who it is (pid, job folder, experiment) into its lock file, which
``python -m hexsweep.monitor`` reads.

Written with fcntl instead of the filelock package because filelock's FileLock is
reentrant per path within a process and cannot "try each of N locks and keep the first
free one" with the holder's description inside the lock file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hexsweep.errors import HexsweepError
from hexsweep.heartbeat import beat

log = logging.getLogger(__name__)


class SlotTimeout(HexsweepError):
    """No slot became free in time."""


@dataclass
class Slot:
    kind: str  # "gpu" (CUDA), "mps" or "cpu"
    index: int  # CUDA index for gpu slots, 0 for mps and cpu slots
    share: int  # k-th share of that GPU / of the CPU pool
    threads: int
    path: Path
    _fd: int | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.stem

    def device(self) -> str:
        return {"gpu": f"cuda:{self.index}", "mps": "mps"}.get(self.kind, "cpu")

    def describe(self, info: dict[str, Any]) -> None:
        """Record the holder in the lock file (only the holder writes it)."""
        if self._fd is None:
            return
        blob = json.dumps({"slot": self.name, "pid": os.getpid(), "since": time.time(), **info}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, blob, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass
class SlotPool:
    lock_dir: Path
    gpus: list[int]
    slots_per_gpu: int
    cpu_slots: int
    cores: int
    gpu_keys: dict[int, str] = field(default_factory=dict)  # CUDA index -> UUID prefix, for names
    kind: str = "gpu"  # what ``gpus`` are: "gpu" (CUDA indices) or "mps" ([0]: the one Apple GPU)

    def slot_name(self, kind: str, index: int, share: int) -> str:
        if kind in ("cpu", "mps"):
            return f"{kind}-{share}"
        return f"gpu-{self.gpu_keys[index]}-{share}" if index in self.gpu_keys else f"gpu{index}-{share}"

    def candidates(self) -> list[tuple[str, int, int]]:
        if self.gpus:
            return [(self.kind, g, k) for k in range(self.slots_per_gpu) for g in self.gpus]
        return [("cpu", 0, k) for k in range(self.cpu_slots)]

    @property
    def size(self) -> int:
        return len(self.candidates())

    def threads_per_slot(self) -> int:
        return max(1, self.cores // max(1, self.size))

    def try_acquire(self) -> Slot | None:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for kind, index, share in self.candidates():
            path = self.lock_dir / f"{self.slot_name(kind, index, share)}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return Slot(kind, index, share, self.threads_per_slot(), path, fd)
        return None

    def acquire(self, timeout_s: float | None = None, poll_s: float = 0.2,
                on_wait: Callable[[float], None] | None = None) -> Slot:
        """Block until a slot is free; ``on_wait(waited_s)`` is called about every 30 s."""
        start = time.monotonic()
        next_notice = 0.0
        while True:
            slot = self.try_acquire()
            if slot is not None:
                return slot
            waited = time.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise SlotTimeout(f"no free slot in {self.lock_dir} after {waited:.0f} s "
                                  f"(pool of {self.size}); are other sweeps running?")
            if on_wait is not None and waited >= next_notice:
                on_wait(waited)
                next_notice = waited + 30
            beat()  # waiting is not stalling
            time.sleep(poll_s)


def read_holders(lock_dir: Path) -> list[dict[str, Any]]:
    """Who holds which slot, for the monitor: only lock files that are really locked."""
    holders = []
    for path in sorted(Path(lock_dir).glob("*.lock")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                continue  # we could lock it: nobody holds it
            except BlockingIOError:
                pass
            raw = os.pread(fd, 65536, 0)
        finally:
            os.close(fd)
        try:
            holders.append(json.loads(raw.decode()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            holders.append({"slot": path.stem})
    return holders


def holder_state(pid: Any) -> str:
    """How a slot holder's process is doing: a stopped (SIGSTOP, Ctrl-Z) or idle holder will not
    free its slot soon, and the waiting job says so."""
    import psutil

    try:
        proc = psutil.Process(int(pid))
        status = proc.status()
        if status == psutil.STATUS_STOPPED:
            return "STOPPED: continue it (kill -CONT) or end it to free the slot"
        if status == psutil.STATUS_ZOMBIE:
            return "exited"
        busy = proc.cpu_percent(0.2)
        return "running" if busy > 1 else "alive but idle (stalled?)"
    except (psutil.Error, TypeError, ValueError):
        return "gone"


def describe_holder(h: dict[str, Any]) -> str:
    """One line naming who holds a slot: pid, state, job and sweep folder, since when."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if "since" in h else "?"
    job_dir = Path(str(h.get("job_dir", "?")))
    return (f"{h.get('slot')} held by pid {h.get('pid')} ({holder_state(h.get('pid'))}), "
            f"job {job_dir.name} of {job_dir.parent}, since {since}")
