"""The seam between the generic job runner and one Hydra app.

The hexsweep launcher runs the jobs of any ``@hydra.main`` app. What only hexsweep's own
training app has (a schema to validate before any job starts, the job-folder contract with
``result.json``, the end-of-sweep report) sits behind ``JobApp``, which that app registers
for its task function with ``@job_app(...)`` under ``@hydra.main``. Every other app gets
``PlainApp``: Hydra's semantics, with nothing read from or written into its job folders.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from hexsweep.cli import first_line
from hexsweep.jobfolder import JobResult
from hexsweep.resources.assign import cpu_share, default_parallel, job_env  # noqa: F401  (job_env: the runner's)


@dataclass
class Verdict:
    """What a sweeper learns from one finished job: ``state`` completed | pruned | failed, the
    objective ``values`` (one per direction) when completed, the job's status word, the reason it
    did not complete, and what else a trial should record (``extra``: e.g. the batch size that
    ran out of memory, the epoch a job was pruned at)."""

    state: str
    values: list[float] | None = None
    status: str = "completed"
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def quote_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged: plain when it is a simple
    word or number, else single-quoted. In a quoted value Hydra unescapes backslashes only where
    they precede a quote (or end the value), so only those are doubled, and each ``'`` escaped (a
    study name may hold ``,``, ``'``, ``=``, ``[`` or non-ASCII characters)."""
    text = str(value)
    if text and all(c.isascii() and (c.isalnum() or c in "_-./:") for c in text):
        return text
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def job_dir_of(ret: JobReturn, fallback: Path) -> Path:
    """A job's folder from its JobReturn. Not ``working_dir``: with hydra.job.chdir=false Hydra
    puts the process's cwd there, which under Ray or Slurm is not the job folder."""
    out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    return Path(str(out)) if out else fallback


class JobApp:
    """The app protocol: every decision the runner and the sweepers make differently for one app.
    Defaults are a plain Hydra app's (Hydra's semantics); hexsweep.train implements its own
    (sweep/train_app.py)."""

    #: modules the job server imports once, so that each job starts without importing them
    preload: tuple[str, ...] = ()
    #: modules the driver's own end-of-sweep work needs (the report's), imported in the background
    #: while the driver waits for the job server to finish its preload before the first job
    driver_later: tuple[str, ...] = ()
    #: its jobs beat (hexsweep.heartbeat) from their start, so the stall watchdog watches
    #: them from the start; a plain app's job is watched only once it has beaten
    beats_from_start: bool = False
    #: its jobs take their own slot (with memory admission); else the runner takes one for them
    takes_own_slot: bool = False

    def validate(self, cfg: DictConfig) -> None:
        """Raise a HexsweepError (one line) for a job config that must not start."""

    def default_n_jobs(self, cfg: DictConfig, num_jobs: int) -> int:
        """Jobs at once when ``hydra.launcher.n_jobs`` is not set: the slots of the pool its jobs
        draw from (sweep/process.py, device ``auto``: the GPU slots, ``hydra.launcher.slots_per_gpu``
        per GPU, else the CPU cores), so that no job starts only to wait for a slot while its
        ``timeout_s`` runs."""
        per_gpu = OmegaConf.select(cfg, "hydra.launcher.slots_per_gpu", default=None) if cfg is not None else None
        return default_parallel("auto", per_gpu, num_jobs)

    def waits_for_owner(self, cfg: DictConfig) -> bool:
        """Whether a second driver on a sweep folder waits for the first (else it refuses)."""
        return False

    def still_running(self, cfg: DictConfig, job_dir: Path) -> str | None:
        """Who still runs this job (a process that outlived its driver), or None."""
        return None

    def earlier_jobs(self, sweep_dir: Path) -> int:
        """How many job folders an earlier driver of this app left in ``sweep_dir`` with their
        records: a sweep there without the app's ``resume_overrides`` would overwrite them, so it
        is refused before it writes anything (0: nothing to keep; a plain app keeps Hydra's
        behaviour, and its ``hydra.launcher.resume``)."""
        return 0

    def done_before(self, cfg: DictConfig, job_dir: Path) -> Any:
        """For resume: the job's earlier record (the app's own kind) if it already completed, else None."""
        return None

    def settle(self, cfg: DictConfig, job_dir: Path, death: tuple[str, str] | None,
               force: bool = False) -> Any:
        """After the job's process ended: the app's record of it (hexsweep.train's: the folder's
        ``JobResult``), writing it for a job that could not (``death`` = (kind, how), kind a key of
        jobfolder.DEATH_STATUS); ``force``: the driver's verdict (timeout, stall) replaces what the
        job wrote. None: the app keeps no record (Hydra's semantics)."""
        return None

    def status_of(self, record: Any) -> str:
        """The status word of a record ``settle`` gave: a ``JobResult``'s, or an app's own
        mapping's ``status`` (the driver shows it in the progress line and sweep.json)."""
        if isinstance(record, JobResult):
            return record.status
        return str(record.get("status")) if isinstance(record, Mapping) else "failed"

    def value_of(self, record: Any) -> Any:
        """The objective a sweeper gets for a job whose task value the driver did not receive
        (``record``: what ``done_before`` or ``settle`` gave)."""
        return None

    def report(self, sweep_dir: Path, interrupted: bool, config: Any = None) -> None:
        """The end-of-sweep table and report, when Hydra's post-sweep callback will not run;
        ``config``: the sweep's (its report settings)."""

    # ---- the runner ----------------------------------------------------------------------
    def job_threads(self, n_jobs: int) -> int | None:
        """The CPU threads of one job when ``n_jobs`` run at once (None: the job decides its own)."""
        return cpu_share(n_jobs)

    def hydra_return(self, ret: JobReturn, record: Any) -> None:
        """Adjust the JobReturn the runner built (Hydra's semantics: FAILED for a job that raised
        or died) before a sweeper sees it. Plain apps keep Hydra's."""

    # ---- a sweeper's trial -----------------------------------------------------------------
    def verdict(self, ret: JobReturn | None, job_dir: Path, n_objectives: int = 1,
                metrics: Sequence[str] | None = None) -> Verdict:
        """A trial's values from its job, as the official Optuna plugin reads a task's return
        value: a float, or a sequence of floats (one per objective); a job that raised or died failed."""
        if ret is None or ret.status != JobStatus.COMPLETED:
            error = ret._return_value if ret is not None else None
            reason = f"failed: {type(error).__name__}: {first_line(str(error))}" if error is not None else \
                "failed: no result"
            return Verdict("failed", status="failed", reason=reason)
        value = ret.return_value
        try:
            values = [float(value)] if n_objectives == 1 else [float(v) for v in value]
        except (TypeError, ValueError):
            reason = (f"Return value must be float-castable. Got '{value}'." if n_objectives == 1 else
                      f"Return value must be a list or tuple of float-castable values. Got '{value}'.")
            return Verdict("failed", status="failed", reason=reason)
        if len(values) != n_objectives:
            return Verdict("failed", status="failed", reason=(
                "The number of the values and the number of the objectives are mismatched. "
                f"Expect {n_objectives}, but actually {len(values)}."))
        if not all(math.isfinite(v) for v in values):
            return Verdict("failed", status="failed", reason=f"non-finite objective {values}")
        return Verdict("completed", values)

    def check_search(self, directions: Sequence[str], metrics: Sequence[str] | None,
                     settings: dict[str, Any]) -> None:
        """Raise a ConfigError (one line) for a search this app cannot run (``settings``: the
        sweeper's values, hydra.sweeper.*)."""

    def resumes(self, cfg: DictConfig) -> bool:
        """Whether the app's own config asks this run to continue the sweep in its folder: a key of
        its ``resume_overrides`` is set (a plain app has none; ``hydra.launcher.resume`` is the
        launcher's, not the app's)."""
        keys = (o.partition("=")[0].lstrip("+~") for o in self.resume_overrides())
        return any(bool(OmegaConf.select(cfg, key, default=None)) for key in keys)

    def joins_study(self, cfg: DictConfig) -> bool:
        """Whether a search may add trials to a study that already has some (plain apps: always,
        as with the official plugin)."""
        return True

    def objective(self, cfg: DictConfig) -> tuple[str | None, str | None]:
        """(metric name, direction) of the objective the app's config declares; a plain app's
        task returns its objective and declares neither (the sweeper's direction decides)."""
        return None, None

    def direction_overrides(self, cfg: DictConfig, direction: str, taken: set[str]) -> list[str]:
        """Overrides that make a job optimise ``direction`` (``taken``: keys already set); a
        plain app has none: its direction is the sweeper's alone."""
        return []

    def trial_overrides(self, cfg: DictConfig, trial_number: int, directions: Sequence[str],
                        taken: set[str]) -> list[str]:
        """Overrides a trial's job gets besides its sampled values (``taken``: keys already set):
        a seed per trial when the app's config has an integer ``seed``, and the search's single
        direction where the app declares one (``direction_overrides``)."""
        extra = []
        seed = OmegaConf.select(cfg, "seed", default=None)
        if isinstance(seed, int) and not isinstance(seed, bool) and "seed" not in taken:
            extra.append(f"seed={seed + trial_number}")  # a new seed per trial
        if len(directions) == 1:
            extra += self.direction_overrides(cfg, directions[0], taken)
        return extra

    def trial_link(self, cfg: DictConfig, study_name: str, trial_number: int, pruner: dict[str, Any]) -> list[str]:
        """The overrides through which a job reports its epochs to its trial and prunes (a plain
        app: none; its trial gets the task's return value)."""
        return []

    def blocks_after_oom(self, failed: dict[str, Any], params: dict[str, Any]) -> bool:
        """Whether ``params`` would run out of memory as a trial with ``failed`` params did."""
        return False

    def pauses(self, outcome: Any) -> bool:
        """Whether a job stopped by Ctrl-C can continue later in the same trial (its state saved)."""
        return False

    def can_continue(self, job_dir: Path) -> bool:
        """Whether a paused job's folder still holds the state it would continue from."""
        return False

    def resume_overrides(self) -> list[str]:
        """What a paused job's overrides get to continue from its saved state."""
        return []

    def program(self) -> str:
        """How the user started this app, for the command that reproduces a job."""
        main = sys.modules.get("__main__")
        spec = getattr(getattr(main, "__spec__", None), "name", None)
        return f"python -m {spec}" if spec else f"python {sys.argv[0]}"


class PlainApp(JobApp):
    """Any other Hydra app. With ``hydra.launcher.resume=true`` its jobs that completed in this
    sweep folder (as sweep.json records) are not run again: their recorded return value is used."""

    def done_before(self, cfg: DictConfig, job_dir: Path) -> dict[str, Any] | None:
        from hexsweep.sweep.manifest import recorded_completion

        if not OmegaConf.select(cfg, "hydra.launcher.resume", default=False):
            return None
        return recorded_completion(job_dir.parent, int(cfg.hydra.job.num), list(cfg.hydra.overrides.task))

    def value_of(self, record: Any) -> Any:
        return (record or {}).get("value")  # sweep.json's row (sweep/manifest.py)


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

