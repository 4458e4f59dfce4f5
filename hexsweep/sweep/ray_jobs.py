"""Run a batch of sweep jobs as Ray tasks (for hydra_plugins/hexsweep_launcher/ray_launcher.py).

Submission is hydra-ray-launcher's own (``start_ray``, ``launch_job_on_ray``; the plugin is
pinned to 1.2.x in pyproject.toml because these helpers are not public API). What differs
from the stock ``_core.launch``: the sweep folder is resolved once in the driver, jobs are
collected as they finish, and a task that Ray reports as lost is recorded ``crashed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray
from omegaconf import DictConfig

from hexsweep.sweep.apps import app_for
from hexsweep.sweep.launcher import compose_job, job_return, validate_all
from hexsweep.sweep.manifest import write_manifest
from hexsweep.sweep.ray_options import concurrent_tasks, init_options, remote_options

log = logging.getLogger(__name__)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()

    def job_config(overrides: Sequence[str], num: int) -> DictConfig:
        return compose_job(launcher.hydra_context, config, sweep_dir, overrides, num)

    app = app_for(launcher.task_function)
    configs = validate_all(job_config, job_overrides, initial_job_idx, app)  # before touching the cluster
    remote = remote_options(launcher.ray_cfg.remote)
    at_once = cluster_concurrency(launcher, len(configs))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(sweep_dir, configs, at_once)
    log.info("Ray launcher: %d jobs, about %d at once on %s, sweep folder %s", len(configs), at_once,
             {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}, sweep_dir)
    pending: dict[Any, tuple[DictConfig, Path]] = {}
    for cfg in configs:
        log.info("\t#%d : %s", cfg.hydra.job.num, " ".join(filter_overrides(cfg.hydra.overrides.task)))
        ref = launch_job_on_ray(launcher.hydra_context, remote, cfg, launcher.task_function,
                                Singleton.get_state())
        pending[ref] = (cfg, sweep_dir / str(cfg.hydra.sweep.subdir))
    returns: dict[int, JobReturn] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        cfg, job_dir = pending.pop(done[0])
        returns[int(cfg.hydra.job.num)] = collect(done[0], cfg, job_dir, app)
    return [returns[num] for num in sorted(returns)]


def cluster_concurrency(launcher: Any, jobs: int = 1024) -> int:
    """How many of this launcher's tasks (at most ``jobs``) the cluster runs at once; connects
    to it first. A ConfigError (one line) when no node can hold one."""
    start_ray(init_options(launcher.ray_cfg.init))
    return concurrent_tasks(ray.nodes(), remote_options(launcher.ray_cfg.remote), jobs)


def collect(ref: Any, cfg: DictConfig, job_dir: Path, app: Any) -> JobReturn:
    """The job's return; a ``crashed`` record when Ray lost the task (its worker or node died).

    The job itself never raises (it records its failure), so any error here is Ray's."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        lines = str(e).strip().splitlines()
        how = f"did not finish under Ray ({type(e).__name__}{': ' + lines[0] if lines else ''})"
        record = app.settle(cfg, job_dir, ("Crashed", how))  # a plain app's folder gets nothing written
        log.error("job %s crashed: %s", cfg.hydra.job.num, how)
        return job_return(cfg, job_dir, record, app, died=how)
