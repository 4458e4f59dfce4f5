"""hexsweep.train's side of the runner seam (sweep/apps.py): its schema, its job folders, its report.

Registered by ``hexsweep.train`` for its task function. A plain Hydra app never reaches this
module: the runner only calls these methods through ``app_for(task_function)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from hexsweep.config import validate
from hexsweep.errors import ConfigError
from hexsweep.jobfolder import (
    COMPLETED,
    CORRUPT,
    CRASHED,
    INTERRUPTED,
    OOM,
    PRUNED,
    RESULT_FILE,
    RUNNING,
    JobError,
    JobResult,
    completed_result,
    read_result,
    record_death,
)
from hexsweep.pruners import SETTINGS as PRUNER_KEYS
from hexsweep.resources.assign import default_parallel
from hexsweep.sweep.apps import JobApp, Verdict, quote_value


class TrainApp(JobApp):
    # torch's optimizer stack and the training code, imported once by the job server
    preload = ("hexsweep.sweep.warm",)
    # the report: pandas, and matplotlib for its plots (report/files.py imports pyplot where it draws)
    driver_later = ("hexsweep.report.end", "hexsweep.report.files", "matplotlib.pyplot")
    beats_from_start = True
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
        if record is not None and record.status == RUNNING:
            return f"pid {record.pid} on {record.host}"
        return None

    def earlier_jobs(self, sweep_dir: Path) -> int:
        try:
            return sum(1 for d in sweep_dir.iterdir() if (d / RESULT_FILE).is_file())
        except OSError:  # unreadable: the driver's own checks of the folder say why
            return 0

    def done_before(self, cfg: DictConfig, job_dir: Path) -> JobResult | None:
        if not cfg.get("resume"):
            return None
        return completed_result(job_dir, list(cfg.hydra.overrides.task))

    def settle(self, cfg: DictConfig, job_dir: Path, death: tuple[str, str] | None,
               force: bool = False) -> JobResult | None:
        record = read_result(job_dir)
        mine = record is not None and record.status not in (RUNNING, CRASHED, CORRUPT)
        if death is None and mine:
            return record
        kind, how = death or ("Crashed", "ended without a result")
        return record_death(job_dir, how, kind, job_identity(cfg), force=force)

    def value_of(self, record: JobResult | None) -> Any:
        return record.value if record is not None and record.ok else math.nan

    def report(self, sweep_dir: Path, interrupted: bool, config: Any = None) -> None:
        import sys

        from hexsweep.report.end import ReportNotWritten, plots_of, report_sweep

        try:
            report_sweep(sweep_dir, interrupted=interrupted, plots=plots_of(config))
        except ReportNotWritten as e:  # interrupted anyway: say it, and let the interruption end the sweep
            print(f"hexsweep: error: {e}", file=sys.stderr)


    # ---- the runner ----------------------------------------------------------------------
    def job_threads(self, n_jobs: int) -> int | None:
        return None  # the job sizes its own CPU share when it takes its slot (resources/job.py)

    def hydra_return(self, ret: JobReturn, record: JobResult | None) -> None:
        # its jobs never fail Hydra's way: the folder holds the truth (status, error.txt) and the
        # value is the folder's verdict (NaN unless completed), so Hydra's post-sweep report always runs
        ret.status = JobStatus.COMPLETED
        ret.return_value = self.value_of(record)

    # ---- a sweeper's trial -----------------------------------------------------------------
    def verdict(self, ret: JobReturn | None, job_dir: Path, n_objectives: int = 1,
                metrics: Sequence[str] | None = None) -> Verdict:
        """From the job folder's result.json: completed -> the objective (or ``metrics`` of the
        best epoch, one per objective); pruned; anything else failed, with its reason."""
        record = read_result(job_dir) or JobResult(CRASHED, error=JobError("Crashed", "no result"))
        status, error = record.status, record.error
        reason = f"{status}: {error.type}: {error.message}" if error else status
        if status == COMPLETED:
            if metrics:
                best = record.best or {}
                values = [_number(best.get(m, math.nan)) for m in metrics]
            else:
                values = [record.value]
            if all(math.isfinite(v) for v in values):
                return Verdict("completed", values, status)
            reason, status = f"non-finite objective {values}", "nan"
        if status == PRUNED:
            return Verdict("pruned", status=status, extra={"pruned_at_epoch": record.pruned_at_epoch})
        extra = {"oom_batch_size": record.oom_batch_size or record.batch_size} if status == OOM else {}
        return Verdict("failed", status=status, reason=reason, extra=extra)

    def check_search(self, directions: Sequence[str], metrics: Sequence[str] | None,
                     settings: dict[str, Any]) -> None:
        if len(directions) > 1 and len(metrics or []) != len(directions):
            raise ConfigError(f"hydra.sweeper.direction has {len(directions)} objectives: set hydra.sweeper."
                              "metrics to as many metric names (e.g. [val_policy_acc,val_value_loss])")
        pruner = (settings.get("pruner") or {}).get("name", "none")
        if settings.get("storage") is None and pruner != "none":
            # its jobs report their epochs to their trial through the storage, from their own process
            raise ConfigError(f"hydra.sweeper.storage=null is invalid with hydra.sweeper.pruner.name={pruner}: "
                              "a trial's job reports its epochs through the storage; allowed a journal file "
                              "(the default, <paths.outputs>/optuna/studies.journal) or an RDB URL")

    def objective(self, cfg: DictConfig) -> tuple[str | None, str | None]:
        return cfg.objective.metric, cfg.objective.direction

    def direction_overrides(self, cfg: DictConfig, direction: str, taken: set[str]) -> list[str]:
        return [] if "objective.direction" in taken else [f"objective.direction={direction}"]

    def trial_link(self, cfg: DictConfig, study_name: str, trial_number: int, pruner: dict[str, Any]) -> list[str]:
        """Its ``optuna.*`` keys: the job's pruning hook (search/pruning.py) reaches its trial."""
        link = [f"optuna.study_name={quote_value(study_name)}", f"optuna.trial_number={trial_number}",
                f"optuna.pruner={quote_value(pruner.get('name', 'none'))}"]
        link += [f"optuna.{key}={quote_value(pruner[key])}" for key in PRUNER_KEYS if key in pruner]
        return link

    def joins_study(self, cfg: DictConfig) -> bool:
        return self.resumes(cfg)  # adding to a study that has trials is asked for with resume=true

    def blocks_after_oom(self, failed: dict[str, Any], params: dict[str, Any]) -> bool:
        """The same params but the batch size ran out of memory at that batch size or a smaller one."""
        others = {k: v for k, v in failed.items() if k != "batch_size"}
        bigger = "batch_size" not in failed or params.get("batch_size", 0) >= failed["batch_size"]
        return bigger and all(params.get(k) == v for k, v in others.items())

    def pauses(self, outcome: Any) -> bool:
        return outcome.status == INTERRUPTED and self.can_continue(outcome.job_dir)

    def can_continue(self, job_dir: Path) -> bool:
        return (job_dir / "last.pt").exists()  # the complete training state (trainer.py)

    def resume_overrides(self) -> list[str]:
        return ["resume=true"]

    def program(self) -> str:
        return "python -m hexsweep.train"


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    return {"experiment": cfg.get("experiment_name"), "overrides": list(cfg.hydra.overrides.task),
            "job": {"name": cfg.hydra.job.name, "num": int(cfg.hydra.job.num)}}


def _number(value: Any) -> float:
    """A metric of the best epoch as a float; NaN (failing the trial) for what is not a number."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


TRAIN_APP = TrainApp()

