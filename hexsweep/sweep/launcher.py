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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from hexsweep.cli import first_line
from hexsweep.errors import HexsweepError
from hexsweep.sweep.apps import JobApp, app_for
from hexsweep.sweep.driver import Outcome, SweepDriver, common_overrides, job_label
from hexsweep.sweep.manifest import write_manifest

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


def job_return(cfg: DictConfig, job_dir: Path, record: dict | None, app: JobApp) -> JobReturn:
    """A JobReturn built by the driver for a job whose own the driver did not receive (Ray)."""
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)  # where sweepers look for the job's folder
    ret = JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=cfg, hydra_cfg=cfg,
                    working_dir=str(job_dir), task_name=cfg.hydra.job.name, status=JobStatus.COMPLETED)
    ret.return_value = app.value_of(record)
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


def n_jobs_for(launcher: Any, app: JobApp, num_jobs: int) -> int:
    requested = launcher.params.get("n_jobs")
    if isinstance(requested, int) and requested > 0:
        return requested
    return app.default_n_jobs(launcher.config, num_jobs)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    app = app_for(launcher.task_function)
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    n_jobs = n_jobs_for(launcher, app, len(job_overrides))
    driver = SweepDriver(launcher, n_jobs, len(job_overrides), sweep_dir)
    driver.common = common_overrides(job_overrides)

    def job_config(overrides: Sequence[str], num: int) -> DictConfig:
        return compose_job(launcher.hydra_context, config, sweep_dir, overrides, num)

    configs = validate_all(job_config, job_overrides, initial_job_idx, app)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(sweep_dir, configs, n_jobs)
    log.info("hexsweep launcher: %d jobs, %d at once, sweep folder %s", len(configs), n_jobs, sweep_dir)
    todo = iter(configs)
    outcomes: dict[int, Outcome] = {}

    def done(outcome: Outcome) -> None:
        outcomes[outcome.num] = outcome

    driver.run(lambda: next(todo, None), done)
    return [outcomes[int(cfg.hydra.job.num)].ret for cfg in configs]
