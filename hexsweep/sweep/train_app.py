"""hexsweep.train's side of the runner seam (sweep/apps.py): its schema, its job folders, its report.

Registered by ``hexsweep.train`` for its task function. A plain Hydra app never reaches this
module: the runner only calls these methods through ``app_for(task_function)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hexsweep.config import validate
from hexsweep.jobfolder import FINISHED_OK, completed_result, read_result, record_death
from hexsweep.resources.assign import default_parallel
from hexsweep.sweep.apps import JobApp


class TrainApp(JobApp):
    # torch's optimizer stack and the training code, imported once by the job server
    preload = ("hexsweep.sweep.warm",)
    beats_from_start = True
    records_failures = True
    takes_own_slot = True  # in train_job, with memory admission (resources/job.py)

    def validate(self, cfg: DictConfig) -> None:
        validate(cfg)

    def default_n_jobs(self, cfg: DictConfig, num_jobs: int) -> int:
        """GPU slots (CUDA or MPS) if the job may use a GPU, else the CPU cores (resources/assign.py)."""
        return default_parallel(cfg.device, cfg.slots_per_gpu, num_jobs)

    def waits_for_owner(self, cfg: DictConfig) -> bool:
        return cfg.get("resume") == "wait"

    def still_running(self, cfg: DictConfig, job_dir: Path) -> str | None:
        record = read_result(job_dir)  # a dead process's "running" reads as crashed
        if record is not None and record.get("status") == "running":
            return f"pid {record.get('pid')} on {record.get('host')}"
        return None

    def done_before(self, cfg: DictConfig, job_dir: Path) -> dict[str, Any] | None:
        if not cfg.get("resume"):
            return None
        return completed_result(job_dir, list(cfg.hydra.overrides.task))

    def settle(self, cfg: DictConfig, job_dir: Path, death: tuple[str, str] | None,
               force: bool = False) -> dict[str, Any] | None:
        record = read_result(job_dir)
        mine = record is not None and record.get("status") not in ("running", "crashed", "corrupt")
        if death is None and mine:
            return record
        kind, how = death or ("Crashed", "ended without a result")
        return record_death(job_dir, how, kind, job_identity(cfg), force=force)

    def value_of(self, record: dict[str, Any] | None) -> Any:
        if record and record.get("status") in FINISHED_OK:
            return (record.get("objective") or {}).get("value", math.nan)
        return math.nan

    def report(self, sweep_dir: Path, interrupted: bool) -> None:
        import sys

        from hexsweep.report.end import ReportNotWritten, report_sweep

        try:
            report_sweep(sweep_dir, interrupted=interrupted)
        except ReportNotWritten as e:  # interrupted anyway: say it, and let the interruption end the sweep
            print(f"hexsweep: error: {e}", file=sys.stderr)


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    return {"experiment": cfg.get("experiment_name"), "overrides": list(cfg.hydra.overrides.task),
            "job": {"name": cfg.hydra.job.name, "num": int(cfg.hydra.job.num)}}


TRAIN_APP = TrainApp()
