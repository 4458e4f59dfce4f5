"""Registration of the hexsweep launcher (``hydra/launcher=hexsweep``, the default of hexsweep.train).

Hydra imports every plugin module at start-up, so this module stays thin: the work is in
hexsweep/sweep/launcher.py, imported when a sweep actually launches.
"""


from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class HexsweepLauncherConf:
    _target_: str = "hydra_plugins.hexsweep_launcher.launcher.HexsweepLauncher"
    # jobs at once; null: what the machine holds (GPU slots, else CPU cores), at most the job count
    n_jobs: int | None = None
    # kill a job that runs longer than this (seconds) and record it as failed; null: no limit
    timeout_s: float | None = None
    # live progress on stderr: auto (always in a sweep) | off
    progress: str = "auto"
    progress_interval_s: float = 15.0


ConfigStore.instance().store(group="hydra/launcher", name="hexsweep", node=HexsweepLauncherConf,
                             provider="hexsweep")


class JobConfigLauncher(Launcher):
    """What hexsweep's launchers share: the setup, and composing each job's config once (the
    sweeper's validation pass and the launcher share it). ``launch`` stays abstract, so Hydra's
    plugin scan does not take this class for a launcher."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context
        from hexsweep.sweep.launcher import memoize_sweep_configs

        memoize_sweep_configs(hydra_context.config_loader)


class HexsweepLauncher(JobConfigLauncher):

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hexsweep.sweep import launcher

        return launcher.launch(self, job_overrides, initial_job_idx)
