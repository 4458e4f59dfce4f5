"""Run a batch of sweep jobs as Ray tasks (for hydra_plugins/hexsweep_launcher/ray_launcher.py).

Submission is hydra-ray-launcher's own (``start_ray``, ``launch_job_on_ray``; the plugin is
pinned to 1.2.x in pyproject.toml because these helpers are not public API). What differs
from the stock ``_core.launch``: the sweep folder is resolved once in the driver, jobs are
collected as they finish, and a task that Ray reports as lost is recorded ``crashed``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray
from omegaconf import DictConfig, OmegaConf, open_dict

from hexsweep.cli import fail
from hexsweep.errors import ConfigError
from hexsweep.jobfolder import read_result
from hexsweep.resources.job import PARALLEL_ENV
from hexsweep.sweep.launcher import job_return, record_death, validate_all, write_manifest

log = logging.getLogger(__name__)


def init_options(init: DictConfig) -> DictConfig:
    """ray.init arguments. hydra-ray-launcher 1.2.2 adds ``object_store_memory`` unless the key
    is present, and Ray refuses that option when connecting to a running cluster: an address
    therefore gets an explicit null (the workaround the plugin's issue tracker gives)."""
    init = OmegaConf.create(OmegaConf.to_container(init, resolve=True))
    if init.get("address") and "object_store_memory" not in init:
        init.object_store_memory = None
    return init


def remote_options(remote: DictConfig) -> DictConfig:
    """ray.remote options, plus the driver's HEXSWEEP_* variables for the task's environment.

    Ray workers are started by the node's raylet and do not inherit the driver's environment;
    the Optuna sweeper hands its storage (and a password in it) to jobs through one of these
    variables, never through the job config, so they travel in Ray's runtime_env instead."""
    options = OmegaConf.to_container(remote, resolve=True) or {}
    env = {k: v for k, v in os.environ.items() if k.startswith("HEXSWEEP_") and k != PARALLEL_ENV}
    if env:
        runtime_env = options.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    return OmegaConf.create(options)


def concurrent_tasks(cluster: dict[str, float], remote: DictConfig, jobs: int) -> int:
    """How many of these tasks the cluster runs at once (for the manifest and the log).

    Raises ConfigError when not even one fits: Ray would otherwise wait forever, printing only
    that the request "cannot be scheduled right now" (e.g. the preset's one GPU a task on a
    CPU-only cluster)."""
    needs = {"num_cpus": ("CPU", float(remote.get("num_cpus", 1) or 0)),
             "num_gpus": ("GPU", float(remote.get("num_gpus", 0) or 0))}
    limits = []
    for key, (resource, need) in needs.items():
        if need <= 0:
            continue
        have = cluster.get(resource, 0.0)
        if have < need:
            raise ConfigError(f"hydra.launcher.ray.remote.{key}={need:g} is more than the Ray cluster has: "
                              f"allowed at most {have:g} ({resource} in the cluster now: {have:g})")
        limits.append(have / need)
    return max(1, min(jobs, int(min(limits)))) if limits else jobs


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()

    def job_config(overrides: Sequence[str], num: int) -> DictConfig:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{num}"
            cfg.hydra.job.num = num
            cfg.hydra.sweep.dir = str(sweep_dir)  # one folder for all jobs, resolved once here
        return cfg

    configs = validate_all(job_config, job_overrides, initial_job_idx)  # before touching the cluster
    remote = remote_options(launcher.ray_cfg.remote)
    start_ray(init_options(launcher.ray_cfg.init))
    try:
        at_once = concurrent_tasks(ray.cluster_resources(), remote, len(configs))
    except ConfigError as e:
        fail(str(e))
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
        returns[int(cfg.hydra.job.num)] = collect(done[0], cfg, job_dir)
    return [returns[num] for num in sorted(returns)]


def collect(ref: Any, cfg: DictConfig, job_dir: Path) -> JobReturn:
    """The job's return, or a ``crashed`` record when Ray lost the task (its worker died)."""
    try:
        ret = ray.get(ref)
    except ray.exceptions.RayError as e:
        how = f"was lost by Ray ({type(e).__name__}: {str(e).strip().splitlines()[0]})"
        record = record_death(job_dir, cfg, how, "Crashed")
        log.error("job %s crashed: %s", cfg.hydra.job.num, how)
        return job_return(cfg, job_dir, record)
    record = read_result(job_dir)
    if record is None or record.get("status") in ("running", "crashed"):
        record = record_death(job_dir, cfg, "ended without a result", "Crashed")
        return job_return(cfg, job_dir, record)
    return ret
