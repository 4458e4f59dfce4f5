"""Ray settings hexsweep derives for hydra-ray-launcher, without importing Ray.

Used by the ray_cluster launcher (hexsweep/sweep/ray_jobs.py) and, for the stock
``hydra/launcher=ray``, by the sweep callback, which runs before that launcher is built.
"""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hexsweep.errors import ConfigError
from hexsweep.resources.cluster import PARALLEL_ENV

STOCK_RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


def joins_running_cluster(init: DictConfig) -> bool:
    """ray.init connects to a running cluster: an address in the config or in RAY_ADDRESS."""
    return bool(init.get("address") or os.environ.get("RAY_ADDRESS"))


def init_options(init: DictConfig) -> DictConfig:
    """ray.init arguments. hydra-ray-launcher 1.2.2 adds ``object_store_memory`` unless the key
    is present, and Ray refuses that option when connecting to a running cluster: joining one
    therefore gets an explicit null (the workaround the plugin's issue tracker gives)."""
    init = OmegaConf.create(OmegaConf.to_container(init, resolve=True))
    if joins_running_cluster(init) and "object_store_memory" not in init:
        init.object_store_memory = None
    return init


def fix_stock_ray_init(config: DictConfig) -> None:
    """The same null for the stock launcher, set in the config before the launcher is built;
    without it ``hydra/launcher=ray hydra.launcher.ray.init.address=auto`` cannot start."""
    launcher = config.hydra.launcher
    if launcher.get("_target_") != STOCK_RAY_LAUNCHER:
        return
    init = launcher.ray.init
    if joins_running_cluster(init) and "object_store_memory" not in init:
        with read_write(init), open_dict(init):
            init.object_store_memory = None


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


def task_needs(remote: DictConfig) -> dict[str, tuple[str, float]]:
    """option -> (Ray resource, amount) of one task; Ray's defaults are 1 CPU and no GPU."""
    cpus = remote.get("num_cpus")
    gpus = remote.get("num_gpus")
    return {"num_cpus": ("CPU", 1.0 if cpus is None else float(cpus)),
            "num_gpus": ("GPU", 0.0 if gpus is None else float(gpus))}


def concurrent_tasks(nodes: list[dict[str, Any]], remote: DictConfig, jobs: int) -> int:
    """How many of these tasks the cluster's alive nodes run at once (for the manifest and log).

    Raises ConfigError when no single node fits one: Ray would otherwise wait forever, printing
    only that the request "cannot be scheduled right now" (e.g. the preset's one GPU a task on a
    CPU-only cluster)."""
    needs = task_needs(remote)
    resources = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    fits = []
    for res in resources:
        counts = [res.get(kind, 0.0) / need for kind, need in needs.values() if need > 0]
        fits.append(math.floor(min(counts)) if counts else jobs)
    if not any(fits):
        for key, (kind, need) in needs.items():
            most = max((res.get(kind, 0.0) for res in resources), default=0.0)
            if need > most:
                raise ConfigError(f"hydra.launcher.ray.remote.{key}={need:g} is more than any Ray node has: "
                                  f"allowed at most {most:g} (the largest node's {kind})")
        wanted = ", ".join(f"{key}={need:g}" for key, (_, need) in needs.items())
        raise ConfigError(f"hydra.launcher.ray.remote: no Ray node has {wanted} at once "
                          f"(nodes: {[{k: res.get(k, 0.0) for k in ('CPU', 'GPU')} for res in resources]})")
    return max(1, min(jobs, sum(fits)))
