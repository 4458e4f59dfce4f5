"""The Ray launcher of hexsweep (``hydra/launcher=ray_cluster``): hydra-ray-launcher's job
submission, with hexsweep's rule that one dead job never ends the sweep.

The stock RayLauncher collects results with one ``ray.get`` per job in order, so a job
whose worker process dies (kill -9, the OOM killer, a lost node) raises in the driver and
the whole sweep ends without its report. This launcher submits the same remote tasks
through the stock plugin's helpers and records such a job as ``crashed`` in its folder.

Hydra imports every plugin module at start-up: nothing here imports Ray.
"""

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from hydra_plugins.hexsweep_launcher.launcher import JobConfigLauncher, exit_on_error


class HexsweepRayLauncher(JobConfigLauncher):
    def __init__(self, ray: DictConfig, **params: Any) -> None:
        super().__init__(**params)
        self.ray_cfg = ray

    def n_jobs_for(self, total: int) -> int:
        """Tasks the cluster runs at once, at most ``total`` (connects to it)."""
        from hexsweep.sweep import ray_jobs

        return exit_on_error(lambda: ray_jobs.cluster_concurrency(self, max(1, total)))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hexsweep.sweep import ray_jobs

        return exit_on_error(lambda: ray_jobs.launch(self, job_overrides, initial_job_idx))
