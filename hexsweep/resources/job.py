"""hexsweep.train's side of resources/assign.py: what its job config asks of the machine."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hexsweep.resources import admission
from hexsweep.resources.assign import Assigned, Want, assign, parallel_jobs
from hexsweep.resources.assign import make_pool as _make_pool

__all__ = ["job_resources", "make_pool", "parallel_jobs"]


def make_pool(cfg: Any, parallel: int) -> Any:
    """The slot pool a job with this config draws from (what ``assign`` takes its slot from; the
    tests inspect it)."""
    return _make_pool(cfg.device, cfg.resources.lock_dir, getattr(cfg, "slots_per_gpu", None),
                      cfg.resources.cpu_slots, parallel)


@contextlib.contextmanager
def job_resources(cfg: Any, job_dir: Path, in_sweep: bool, parallel: int, describe: dict[str, Any],
                  finished: Callable[[], list[dict[str, Any]]] | None = None) -> Iterator[Assigned]:
    """Hold a slot (in sweeps, or with resources.slots=on), wait for memory, sample usage.
    ``finished``: the results of the sweep's finished jobs, to learn what a job needs."""

    def need(device_type: str) -> admission.Need | None:
        return admission.required(cfg, finished() if in_sweep and finished is not None else None,
                                  admission.job_signature(cfg), device_type)

    res = cfg.resources
    want = Want(device=str(cfg.device), slots=res.slots, in_sweep=in_sweep, lock_dir=res.lock_dir,
                parallel=parallel, slots_per_gpu=cfg.slots_per_gpu, cpu_slots=res.cpu_slots,
                num_threads=getattr(cfg, "num_threads", None),
                wait_timeout_s=res.wait_timeout_s, describe={**describe, "job_dir": str(job_dir)}, need=need,
                sample_to=job_dir / "resources.jsonl", sample_interval_s=res.sample_interval_s)
    with assign(want) as assigned:
        yield assigned
