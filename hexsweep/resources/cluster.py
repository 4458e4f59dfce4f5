"""What a cluster scheduler gave this job, for the slot pool and the thread count.

The hexsweep launcher tells its jobs how many run at once. Elsewhere a scheduler decides:
- Ray, per task, from the resources the launcher preset asks for (``ray.remote.num_cpus``).
  A job running as a Ray task reads what it was assigned, so that its slot pool and threads
  match what Ray packs onto the node. Ray is never imported here: a Ray worker has already
  imported it.
- submitit asks for ``cpus_per_task`` per job: on one machine (submitit_local) the node holds
  cores // cpus_per_task such jobs.
- Slurm (a job with SLURM_JOB_ID, not started by the hexsweep launcher) has already given the
  job its own CPUs (its affinity mask) and GPUs (CUDA_VISIBLE_DEVICES): a CPU slot would only
  make jobs of the same node wait for each other.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

PARALLEL_ENV = "HEXSWEEP_PARALLEL_JOBS"  # set by the hexsweep launcher for the jobs it forks


@dataclass(frozen=True)
class Assignment:
    cpus: float
    gpus: float


def ray_assignment() -> Assignment | None:
    """The CPUs and GPUs Ray assigned to the task this process runs, or None outside Ray tasks."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None  # the driver, not a task
    assigned = context.get_assigned_resources()
    return Assignment(float(assigned.get("CPU", 0.0)), float(assigned.get("GPU", 0.0)))


def jobs_per_node(cores: int, assignment: Assignment) -> int:
    """How many tasks of this size Ray can pack onto a node with ``cores`` cores."""
    if assignment.cpus <= 0:
        return cores  # num_cpus=0: Ray does not limit them; give each job one thread
    return max(1, math.floor(cores / assignment.cpus))


def slurm_allocated() -> bool:
    """A job that submitit submitted to Slurm, not a job forked by the hexsweep launcher inside
    an allocation, nor a Ray task on a Ray cluster that runs on top of Slurm."""
    return (os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ
            and PARALLEL_ENV not in os.environ and ray_assignment() is None)


def slurm_cpus() -> int | None:
    """The CPUs Slurm gave this task (SLURM_CPUS_PER_TASK), which holds even on clusters that
    do not pin tasks to their cores."""
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
