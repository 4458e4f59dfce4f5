"""The seam between the generic job runner and one Hydra app.

The hexsweep launcher runs the jobs of any ``@hydra.main`` app. What only hexsweep's own
training app has (a schema to validate before any job starts, the job-folder contract with
``result.json``, the end-of-sweep report) sits behind ``JobApp``, which that app registers
for its task function with ``@job_app(...)`` under ``@hydra.main``. Every other app gets
``PlainApp``: Hydra's semantics, with nothing read from or written into its job folders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hexsweep.devices import usable_cores
from hexsweep.resources.assign import cpu_share, job_env  # noqa: F401  (the runner's imports; decided there)


class JobApp:
    """Defaults are a plain Hydra app's; hexsweep.train overrides them (sweep/train_app.py)."""

    #: modules the job server imports once, so that each job starts without importing them
    preload: tuple[str, ...] = ()
    #: its jobs beat (hexsweep.heartbeat) from their start, so the stall watchdog watches
    #: them from the start; a plain app's job is watched only once it has beaten
    beats_from_start: bool = False
    #: jobs never raise: failures live in the job folder, and Hydra gets COMPLETED + NaN
    records_failures: bool = False
    #: its jobs take their own slot (with memory admission); else the runner takes one for them
    takes_own_slot: bool = False

    def validate(self, cfg: DictConfig) -> None:
        """Raise a HexsweepError (one line) for a job config that must not start."""

    def default_n_jobs(self, cfg: DictConfig, num_jobs: int) -> int:
        """Jobs at once when ``hydra.launcher.n_jobs`` is not set: the CPU cores."""
        return max(1, min(usable_cores(), num_jobs))

    def waits_for_owner(self, cfg: DictConfig) -> bool:
        """Whether a second driver on a sweep folder waits for the first (else it refuses)."""
        return False

    def still_running(self, cfg: DictConfig, job_dir: Path) -> str | None:
        """Who still runs this job (a process that outlived its driver), or None."""
        return None

    def done_before(self, cfg: DictConfig, job_dir: Path) -> dict[str, Any] | None:
        """For resume: the job's earlier result if it already completed, else None."""
        return None

    def settle(self, cfg: DictConfig, job_dir: Path, death: tuple[str, str] | None,
               force: bool = False) -> dict[str, Any] | None:
        """After the job's process ended: its record in the job folder, writing it for a job
        that could not (``death`` = (kind, how), kind a key of jobfolder.DEATH_STATUS);
        ``force``: the driver's verdict (timeout, stall) replaces what the job wrote."""
        return None

    def value_of(self, record: dict[str, Any] | None) -> Any:
        """The objective a sweeper gets for a job whose task value the driver did not receive."""
        return None

    def report(self, sweep_dir: Path, interrupted: bool) -> None:
        """The end-of-sweep table and report, when Hydra's post-sweep callback will not run."""


class PlainApp(JobApp):
    """Any other Hydra app. With ``hydra.launcher.resume=true`` its jobs that completed in this
    sweep folder (as sweep.json records) are not run again: their recorded return value is used."""

    def done_before(self, cfg: DictConfig, job_dir: Path) -> dict[str, Any] | None:
        from hexsweep.sweep.manifest import recorded_completion

        if not OmegaConf.select(cfg, "hydra.launcher.resume", default=False):
            return None
        return recorded_completion(job_dir.parent, int(cfg.hydra.job.num), list(cfg.hydra.overrides.task))

    def value_of(self, record: dict[str, Any] | None) -> Any:
        return (record or {}).get("value")


PLAIN = PlainApp()
_APPS: dict[int, JobApp] = {}


def job_app(app: JobApp) -> Callable[[Callable], Callable]:
    """Register ``app`` for the decorated task function (put it under ``@hydra.main``)."""

    def register(task_function: Callable) -> Callable:
        _APPS[id(task_function)] = app
        task_function.__hexsweep_app__ = app  # survives pickling by value into a job process
        return task_function

    return register


def app_for(task_function: Any) -> JobApp:
    app = getattr(task_function, "__hexsweep_app__", None) or _APPS.get(id(task_function))
    return app if isinstance(app, JobApp) else PLAIN

