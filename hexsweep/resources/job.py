"""What one job gets from the machine: a slot, its device and threads, admission, sampling."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hexsweep.devices import usable_cores
from hexsweep.resources import admission
from hexsweep.resources.cluster import (
    PARALLEL_ENV,
    Assignment,
    jobs_per_node,
    ray_assignment,
    slurm_allocated,
    slurm_cpus,
)
from hexsweep.resources.gpus import gpu_count, slot_keys
from hexsweep.resources.sampler import ResourceSampler
from hexsweep.resources.slots import Slot, SlotPool, describe_holder, read_holders

log = logging.getLogger(__name__)


@dataclass
class JobResources:
    slot: Slot | None
    device: str
    threads: int
    waited_s: float
    sampler: ResourceSampler
    acquired_at: float | None = None  # epoch seconds when the slot was taken


def parallel_jobs(hydra_launcher_cfg: Any | None = None) -> int:
    """How many jobs of this sweep run at once on this machine: set by the hexsweep launcher,
    else what Ray or submitit packs onto the node, else the launcher's n_jobs."""
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


def make_pool(cfg: Any, parallel: int) -> SlotPool:
    wants_gpu = str(cfg.device).startswith("cuda") or cfg.device == "auto"
    gpus = list(range(gpu_count())) if wants_gpu else []
    if str(cfg.device).startswith("cuda:"):
        gpus = [int(str(cfg.device).split(":")[1])]
    return SlotPool(Path(cfg.resources.lock_dir).resolve(), gpus, cfg.slots_per_gpu,
                    cfg.resources.cpu_slots or parallel, usable_cores(),
                    slot_keys() if gpus else {})


@contextlib.contextmanager
def job_resources(cfg: Any, job_dir: Path, in_sweep: bool, parallel: int, describe: dict[str, Any],
                  finished: Callable[[], list[dict[str, Any]]] | None = None) -> Iterator[JobResources]:
    """Hold a slot (in sweeps, or with resources.slots=on), wait for memory, sample usage.
    ``finished``: the results of the sweep's finished jobs, to learn what a job needs."""
    use_slots = cfg.resources.slots == "on" or (cfg.resources.slots == "auto" and in_sweep)
    slot: Slot | None = None
    waited = 0.0
    acquired_at = None
    pool = make_pool(cfg, parallel) if use_slots else None
    slurm = slurm_allocated()
    if pool is not None and not pool.gpus and slurm and cfg.resources.slots == "auto":
        pool = None  # Slurm gave this job its own cores already
    if pool is not None:

        def notice(waited_s: float) -> None:
            holders = "; ".join(describe_holder(h) for h in read_holders(pool.lock_dir)) or "no holder found"
            log.warning("waiting for a free slot (pool of %d in %s) for %.0f s: %s", pool.size,
                        pool.lock_dir, waited_s, holders)

        slot = pool.acquire(cfg.resources.wait_timeout_s, on_wait=notice)
        acquired_at = time.time()
        slot.describe({**describe, "job_dir": str(job_dir)})
    try:
        device = cfg.device
        if slot is not None and slot.kind == "gpu" and cfg.device in ("auto", "cuda"):
            device = slot.device()
        threads = slot.threads if slot is not None else usable_cores()
        # a GPU slot's share of the cores assumes this machine's pool; a scheduler may pack
        # more jobs per node than GPU slots (Ray: num_cpus per task), so never exceed that share
        threads = min(threads, max(1, usable_cores() // max(1, parallel)))
        if slurm and (cpus := slurm_cpus()):
            threads = cpus
        gpu_index = slot.index if slot is not None and slot.kind == "gpu" else None
        need = admission.required(cfg, finished() if in_sweep and finished is not None else None,
                                  admission.job_signature(cfg), on_gpu=gpu_index is not None)
        waited += admission.wait_for_memory(need, gpu_index, cfg.resources.wait_timeout_s)
        with ResourceSampler(job_dir / "resources.jsonl", cfg.resources.sample_interval_s,
                             gpu_index) as sampler:
            yield JobResources(slot, device, threads, waited, sampler, acquired_at)
    finally:
        if slot is not None:
            slot.release()
