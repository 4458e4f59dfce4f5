"""One place decides what a job gets from the machine: its slot, its device and visible GPU,
its CPU threads, its share of an MPS GPU's memory, memory admission and the resource sampler.

``assign`` runs in the job's own process, whoever started it:
- hexsweep.train's jobs under every launcher (hexsweep, basic, joblib, submitit, Ray), through
  ``job_resources`` (resources/job.py), which reads the job's config;
- the hexsweep launcher's job process for any other Hydra app (sweep/process.py);
- the probe's packing workers (probe.py).
The sweep driver only sizes the sweep (``default_parallel``, ``cpu_share``, ``job_env``): it counts
CUDA GPUs through NVML, never CUDA (its jobs start from a server that must not hold a CUDA
context, see sweep/process.py), asks torch whether an MPS GPU exists, and never reads or
reserves any GPU's memory: that happens in the job.

Devices (docs/design.md, "Devices", says which library call answers what):
- CUDA: slots ``gpu-<uuid>-<k>``, ``slots_per_gpu`` per GPU (default 1); the job trains on the
  explicit ``cuda:<i>`` of its slot, or, for a plain app that picks its own device, its slot's
  GPU becomes its only visible one (``CUDA_VISIBLE_DEVICES``).
- MPS (Apple's GPU): slots ``mps-<k>``, ``slots_per_gpu`` of them (default 2, mps.DEFAULT_SLOTS);
  each job caps its MPS allocations at 1/slots of Metal's recommended maximum.
- CPU: slots ``cpu-<k>``, one per parallel job.
Threads: the slot's share of the cores, never more than the cores over the jobs this machine runs
at once (a scheduler may pack more jobs per node than there are slots), the CPUs Slurm gave the
job, or ``num_threads`` when set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hexsweep.devices import usable_cores
from hexsweep.resources import mps
from hexsweep.resources.cluster import (
    PARALLEL_ENV,
    Assignment,
    jobs_per_node,
    ray_assignment,
    slurm_allocated,
    slurm_cpus,
)
from hexsweep.resources.gpus import gpu_count, slot_keys
from hexsweep.resources.slots import Slot, SlotPool, describe_holder, read_holders

if TYPE_CHECKING:
    from hexsweep.resources.admission import Need

log = logging.getLogger(__name__)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ---- the machine, as the driver may see it (no GPU memory is read here) ---------------------
def gpu_backend(device: Any) -> tuple[str, list[int]]:
    """The slot kind and GPUs a job with ``device`` may use: ("gpu", CUDA indices) through
    NVML, ("mps", [0]) for Apple's GPU, else ("cpu", []). CUDA comes first, as resolve_device's
    ``auto`` does."""
    device = str(device)
    if device.startswith("cuda:"):
        return "gpu", [int(device.split(":")[1])]
    if device in ("auto", "cuda") and (n := gpu_count()):
        return "gpu", list(range(n))
    if device in ("auto", "mps") and mps.available():
        return "mps", [0]
    return "cpu", []


def slots_per_gpu(kind: str, configured: int | None) -> int:
    """Jobs that share one GPU: as configured, else 1 on CUDA and mps.DEFAULT_SLOTS on MPS."""
    if configured:
        return int(configured)
    return mps.DEFAULT_SLOTS if kind == "mps" else 1


def default_parallel(device: Any, per_gpu: int | None, num_jobs: int) -> int:
    """Jobs at once when ``hydra.launcher.n_jobs`` is not set: the GPU slots if the job may use a
    GPU (CUDA or MPS), else the CPU cores; at most the number of jobs."""
    kind, gpus = gpu_backend(device)
    machine = len(gpus) * slots_per_gpu(kind, per_gpu) if gpus else usable_cores()
    return max(1, min(machine, num_jobs))


def cpu_share(n_jobs: int) -> int:
    """Threads per job when ``n_jobs`` jobs share this machine's cores."""
    return max(1, usable_cores() // max(1, n_jobs))


def job_env(n_jobs: int) -> dict[str, str]:
    """Environment every job of the sweep gets: the driver's, plus its CPU share, for any app.
    (Given to each job, never set in the driver's own environment, which may run other sweeps.)
    The thread variables reach what the job starts (data generation's processes); torch's own
    threads are set in the job by ``assign``, since the job server loaded torch before them."""
    env = dict(os.environ)
    env[PARALLEL_ENV] = str(n_jobs)  # how many jobs share this machine (parallel_jobs)
    share = str(cpu_share(n_jobs))
    for key in THREAD_ENV:
        env.setdefault(key, share)
    return env


def parallel_jobs(hydra_launcher_cfg: Any | None = None) -> int:
    """How many jobs of this sweep run at once on this machine: set by the hexsweep launcher,
    else what Ray or submitit packs onto the node, else the launcher's n_jobs (joblib's
    negative n_jobs counted as joblib does), else 1 (the basic launcher runs one at a time)."""
    if os.environ.get(PARALLEL_ENV, "").isdigit():
        return max(1, int(os.environ[PARALLEL_ENV]))
    if (assignment := ray_assignment()) is not None:
        return jobs_per_node(usable_cores(), assignment)
    cpus_per_task = getattr(hydra_launcher_cfg, "cpus_per_task", None)
    if isinstance(cpus_per_task, int) and cpus_per_task > 0:  # submitit
        return jobs_per_node(usable_cores(), Assignment(float(cpus_per_task), 0.0))
    n = getattr(hydra_launcher_cfg, "n_jobs", None)
    if isinstance(n, int) and n < 0:  # joblib's convention: -1 = all cores, -2 = all but one
        return max(1, usable_cores() + 1 + n)
    return n if isinstance(n, int) and n > 0 else 1


def make_pool(device: Any, lock_dir: str | Path, per_gpu: int | None, cpu_slots: int | None,
              parallel: int) -> SlotPool:
    """The slot pool of this machine for a job on ``device``."""
    kind, gpus = gpu_backend(device)
    return SlotPool(Path(lock_dir).resolve(), gpus, slots_per_gpu(kind, per_gpu), cpu_slots or parallel,
                    usable_cores(), slot_keys() if kind == "gpu" else {}, kind=kind if gpus else "gpu")


# ---- in the job ---------------------------------------------------------------------------
@dataclass
class Want:
    """What a job asks of the machine."""

    device: str = "auto"  # auto | cpu | cuda | cuda:<i> | mps
    slots: str = "on"  # on | off | auto: only in a sweep
    in_sweep: bool = True
    lock_dir: str | Path | None = None
    parallel: int | None = 1  # jobs at once on this machine; None: the pool's size says
    slots_per_gpu: int | None = None  # None: the device's default
    cpu_slots: int | None = None  # None: ``parallel``
    num_threads: int | None = None  # None: the job's share
    wait_timeout_s: float | None = None  # for a slot and for memory; None: no limit
    describe: dict[str, Any] = field(default_factory=dict)  # who holds the slot, for the monitor
    pin_visible: bool = False  # the slot's CUDA GPU becomes the job's only visible one
    need: Callable[[str], Need | None] | None = None  # device type -> what the job needs
    sample_to: Path | None = None  # resources.jsonl
    sample_interval_s: float = 2.0


@dataclass
class Assigned:
    slot: Slot | None
    device: str  # what the job trains on: the slot's device, else as configured
    threads: int
    waited_s: float = 0.0
    sampler: Any = None  # a ResourceSampler while the job runs, when it samples
    acquired_at: float | None = None  # epoch seconds when the slot was taken
    mps_fraction: float | None = None  # its cap on the MPS GPU's memory, when it runs on one


def _take_slot(want: Want) -> Slot | None:
    if want.lock_dir is None or want.slots == "off" or (want.slots == "auto" and not want.in_sweep):
        return None
    pool = make_pool(want.device, want.lock_dir, want.slots_per_gpu, want.cpu_slots,
                     want.parallel or usable_cores())
    if not pool.gpus and slurm_allocated() and want.slots == "auto":
        return None  # Slurm gave this job its own cores already

    def notice(waited_s: float) -> None:
        holders = "; ".join(describe_holder(h) for h in read_holders(pool.lock_dir)) or "no holder found"
        log.warning("waiting for a free slot (pool of %d in %s) for %.0f s: %s", pool.size, pool.lock_dir,
                    waited_s, holders)

    slot = pool.acquire(want.wait_timeout_s, on_wait=notice)
    slot.describe(want.describe)
    return slot


def _threads(want: Want, slot: Slot | None) -> int:
    if want.num_threads:
        return int(want.num_threads)
    if slurm_allocated() and (cpus := slurm_cpus()):
        return cpus
    threads = slot.threads if slot is not None else usable_cores()
    if want.parallel:
        # a GPU slot's share of the cores assumes this machine's pool; a scheduler may pack
        # more jobs per node than GPU slots (Ray: num_cpus per task), so never exceed that share
        threads = min(threads, cpu_share(want.parallel))
    return threads


def _pin(slot: Slot) -> None:
    """Before the app can touch CUDA: the slot's GPU becomes the only one it sees (as cuda:0)."""
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[slot.index] if slot.index < len(visible) else str(slot.index)


@contextlib.contextmanager
def assign(want: Want) -> Iterator[Assigned]:
    """Take a slot, pin the device, set torch's threads, cap the MPS share, wait for memory and
    sample what the job uses, in that order; the slot is released when the block ends (and by
    the kernel if the process dies first)."""
    slot = _take_slot(want)
    acquired_at = time.time() if slot is not None else None
    try:
        kind = slot.kind if slot is not None else "cpu"
        device = want.device
        if kind == "gpu" and want.device in ("auto", "cuda"):
            device = slot.device()
        elif kind == "mps" and want.device in ("auto", "mps"):
            device = "mps"
        if kind == "gpu" and want.pin_visible:
            _pin(slot)
        threads = _threads(want, slot)
        if "torch" in sys.modules:  # the job server loaded it; a process without torch has no threads to set
            sys.modules["torch"].set_num_threads(threads)
        fraction = None
        if kind == "mps" and device == "mps":
            fraction = 1.0 / slots_per_gpu("mps", want.slots_per_gpu)
            mps.limit(fraction)
        gpu_index = slot.index if kind == "gpu" else None
        device_type = {"gpu": "cuda", "mps": "mps"}.get(kind, "cpu")
        waited = 0.0
        if want.need is not None and (need := want.need(device_type)) is not None:
            from hexsweep.resources import admission  # psutil: a plain app's job never needs it

            timeout_s = float("inf") if want.wait_timeout_s is None else want.wait_timeout_s
            waited = admission.wait_for_memory(need, gpu_index, timeout_s, mps_fraction=fraction)
        assigned = Assigned(slot, device, threads, waited, None, acquired_at, fraction)
        if want.sample_to is None:
            yield assigned
        else:
            from hexsweep.resources.sampler import ResourceSampler

            with ResourceSampler(want.sample_to, want.sample_interval_s, gpu_index, on_mps=fraction is not None) \
                    as assigned.sampler:
                yield assigned
    finally:
        if slot is not None:
            slot.release()


_held: list[contextlib.AbstractContextManager] = []  # a generator's context ends when it is collected


def hold(want: Want) -> Assigned:
    """``assign`` for the rest of this process's life (a job or worker process that ends with its
    work): the kernel frees the slot when the process ends, however it ends."""
    context = assign(want)
    assigned = context.__enter__()
    _held.append(context)
    return assigned
