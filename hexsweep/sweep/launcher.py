"""The hexsweep launcher's core: any Hydra app's jobs, each in a fresh process, as many at once
as there are slots.

Why not the joblib launcher (design notes in docs/design.md): a worker killed by SIGKILL or
the OOM killer ends the sweep, reused workers keep the first job's CUDA device, and a raising
job skips Hydra's post-sweep callback. Here:

- Before any job starts, every job's config is composed once, and validated by the app's
  seam (sweep/apps.py; hexsweep.train checks its schema); a bad value stops the sweep with
  one line naming the job and the key.
- The sweep driver (sweep/driver.py) starts each job from the job server (sweep/process.py),
  waits for them, watches them (timeout, stall watchdog) and interrupts them.
- Each job runs Hydra's own ``run_job``: its JobReturn (return value, cfg, hydra_cfg, status)
  is Hydra's. A job that dies is FAILED for a plain app, as Hydra's launchers report a
  raising job; hexsweep.train's jobs never fail Hydra's way (their folder holds the truth),
  so Hydra's ``on_multirun_end`` always runs its report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from hexsweep.cli import first_line
from hexsweep.errors import ConfigError, HexsweepError
from hexsweep.sweep.apps import JobApp, app_for
from hexsweep.sweep.driver import Outcome, SweepDriver, common_overrides, job_label
from hexsweep.sweep.manifest import write_manifest
from hexsweep.sweep.owner import own

log = logging.getLogger(__name__)


class JobConfigError(HexsweepError):
    """A job of the sweep has a config that must not start; the message names the job."""


def compose_job(hydra_context: Any, master: DictConfig, sweep_dir: Path, overrides: Sequence[str],
                num: int) -> DictConfig:
    """Job ``num``'s config, in the sweep folder resolved once by the driver."""
    cfg = hydra_context.config_loader.load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{num}"
        cfg.hydra.job.num = num
        cfg.hydra.sweep.dir = str(sweep_dir)  # one folder for all jobs (its name may hold a time)
    return cfg


def job_return(cfg: DictConfig, job_dir: Path, record: Any, app: JobApp, died: str) -> JobReturn:
    """A JobReturn built by the driver for a job whose own it did not receive (Ray lost it): FAILED
    with a JobDied error naming how, as Hydra reports a job that raised; the app may adjust it."""
    from hexsweep.sweep.driver import JobDied

    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)  # where sweepers look for the job's folder
    ret = JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=cfg, hydra_cfg=cfg,
                    working_dir=str(job_dir), task_name=cfg.hydra.job.name, status=JobStatus.FAILED)
    ret.return_value = JobDied(f"job {cfg.hydra.job.num} {died} [Crashed]")
    app.hydra_return(ret, record)
    return ret


def validate_all(job_config: Callable[[Sequence[str], int], DictConfig], job_overrides: Sequence[Sequence[str]],
                 first: int, app: JobApp) -> list[DictConfig]:
    """Compose and validate every job before the first starts; JobConfigError on the first bad one."""
    configs = []
    common = common_overrides(job_overrides)
    for i, overrides in enumerate(job_overrides):
        label = job_label(overrides, common)
        try:
            cfg = job_config(overrides, first + i)
            app.validate(cfg)
        except HexsweepError as e:
            raise JobConfigError(f"job {first + i} ({label}): {e}") from None
        except (HydraException, OmegaConfBaseException) as e:
            raise JobConfigError(f"job {first + i} ({label}): {first_line(str(e))}") from None
        configs.append(cfg)
    return configs


def check_params(params: dict[str, Any]) -> None:
    """ConfigError (one line) for a launcher value that cannot work: checked before any job of a
    list launch, and before any trial of a search, starts."""
    for key in ("timeout_s", "stall_timeout_s"):
        v = params.get(key)
        if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ConfigError(f"hydra.launcher.{key}={v} is invalid: "
                              "allowed a number of seconds > 0, or null (no limit)")
    v = params.get("kill_grace_s", 30.0)
    if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
        raise ConfigError(f"hydra.launcher.kill_grace_s={v} is invalid: allowed a number of seconds >= 0")
    v = params.get("slots_per_gpu")
    if v is not None and not (isinstance(v, int) and v > 0):
        raise ConfigError(f"hydra.launcher.slots_per_gpu={v} is invalid: "
                          "allowed an integer > 0, or null (the device's default)")
    v = params.get("n_jobs")
    if v is not None and not (isinstance(v, int) and v > 0):
        raise ConfigError(f"hydra.launcher.n_jobs={v} is invalid: "
                          "allowed an integer > 0, or null (what the machine holds)")
    v = params.get("progress_interval_s", 15.0)
    if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
        raise ConfigError(f"hydra.launcher.progress_interval_s={v} is invalid: allowed a number of seconds > 0")
    if params.get("progress", "auto") not in ("auto", "off"):
        raise ConfigError(f"hydra.launcher.progress={params.get('progress')!r} is invalid: allowed auto or off")


def n_jobs_for(launcher: Any, num_jobs: int) -> int:
    """Jobs at once: ``hydra.launcher.n_jobs``, else what the machine holds for this app."""
    check_params(launcher.params)
    requested = launcher.params.get("n_jobs")
    if isinstance(requested, int) and requested > 0:
        return requested
    return app_for(launcher.task_function).default_n_jobs(launcher.config, max(1, num_jobs))


def sweep_dir_of(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)).resolve()


def prepared_config(hydra_context: Any, master: DictConfig, app: JobApp, overrides: Sequence[str],
                    num: int) -> DictConfig:
    """Job ``num``'s composed config, validated by its app; JobConfigError (the one line of the
    app's or Hydra's message) for a config that must not start, e.g. a sampled value out of range."""
    try:
        cfg = compose_job(hydra_context, master, sweep_dir_of(master), overrides, num)
        app.validate(cfg)
    except HexsweepError as e:
        raise JobConfigError(first_line(str(e))) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise JobConfigError(first_line(str(e))) from None
    return cfg


def claim_sweep_folder(launcher: Any) -> None:
    """Take an existing sweep folder for this driver (sweep/owner.py) at the launcher's setup:
    Hydra's BasicSweeper writes multirun.yaml into it before it calls ``launch``, and a second
    driver refused only then had already replaced the running sweep's multirun.yaml (whose
    command the report's resume line repeats). SweepBusy if another live driver runs it; a
    ConfigError if it holds an earlier sweep's jobs and the app's resume was not asked for (they
    would be overwritten, and the report would mix the two sweeps). A folder that does not
    exist yet is left alone: a command refused later (a bad value) then leaves no folder behind,
    and the driver takes it when it launches."""
    config = launcher.config
    sweep_dir = sweep_dir_of(config)
    if not sweep_dir.is_dir():
        return
    app = app_for(launcher.task_function)
    own(sweep_dir, wait=app.waits_for_owner(config))
    if not app.resumes(config) and (n := app.earlier_jobs(sweep_dir)):
        raise ConfigError(f"{sweep_dir} holds {n} job folder{'s' if n > 1 else ''} of an earlier sweep: add "
                          f"{' '.join(app.resume_overrides())} to continue it (its completed jobs are kept), or "
                          "give another hydra.sweep.dir")


def prepare(launcher: Any, overrides: Sequence[str], num: int) -> DictConfig:
    return prepared_config(launcher.hydra_context, launcher.config, app_for(launcher.task_function), overrides, num)


def launch_async(launcher: Any, feed: Callable[[], DictConfig | None], on_done: Callable[[Outcome], None],
                 total: int, n_jobs: int | None = None, common: set[str] | None = None) -> None:
    """The launcher's asynchronous entry point: keep ``n_jobs`` jobs running, asking ``feed`` for the
    next config whenever a slot frees (None: nothing more for now), and hand each ``Outcome`` to
    ``on_done``. Ends when the feed has nothing and no job runs; raises SweepInterrupted after
    Ctrl-C/SIGTERM, once the jobs stopped and the app reported."""
    check_params(launcher.params)
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    n_jobs = n_jobs or n_jobs_for(launcher, total)
    driver = SweepDriver(launcher, n_jobs, total, sweep_dir_of(config))
    driver.common = common or set()
    driver.run(feed, on_done)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Hydra's list launch: every job composed and validated before the first starts, then run
    through ``launch_async``; the JobReturns in the order of ``job_overrides``."""
    check_params(launcher.params)
    app = app_for(launcher.task_function)
    sweep_dir = sweep_dir_of(launcher.config)
    n_jobs = n_jobs_for(launcher, len(job_overrides))

    def job_config(overrides: Sequence[str], num: int) -> DictConfig:
        return compose_job(launcher.hydra_context, launcher.config, sweep_dir, overrides, num)

    configs = validate_all(job_config, job_overrides, initial_job_idx, app)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(sweep_dir, configs, n_jobs)
    log.info("hexsweep launcher: %d jobs, %d at once, sweep folder %s", len(configs), n_jobs, sweep_dir)
    todo = iter(configs)
    outcomes: dict[int, Outcome] = {}

    def done(outcome: Outcome) -> None:
        outcomes[outcome.num] = outcome

    launch_async(launcher, lambda: next(todo, None), done, len(configs), n_jobs, common_overrides(job_overrides))
    return [outcomes[int(cfg.hydra.job.num)].ret for cfg in configs]
