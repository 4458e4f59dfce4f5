"""Registration of the hexsweep launcher (``hydra/launcher=hexsweep``, the default of hexsweep.train).

Hydra imports every plugin module at start-up, so this module stays thin: the work is in
hexsweep/sweep/launcher.py, imported when a sweep actually launches.
"""


import signal
from collections.abc import Callable, Sequence
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
    # interrupt, then kill, a job that runs longer than this (seconds), recorded failed; null: no limit
    timeout_s: float | None = None
    # kill a job whose training made no progress (heartbeat) for this long, recorded stalled; null: off
    stall_timeout_s: float | None = 900.0
    # seconds an interrupted job (Ctrl-C, SIGTERM, timeout) has to stop before it gets SIGKILL
    kill_grace_s: float = 30.0
    # a plain Hydra app's jobs each hold a slot of this pool (null: outputs/.locks/<host> under the
    # launch directory, hexsweep.train's default); jobs per GPU (null: 1 on CUDA, 2 on MPS)
    slots_dir: str | None = None
    slots_per_gpu: int | None = None
    # a plain app: skip the jobs sweep.json records as completed in this sweep folder
    # (hexsweep.train has its own resume=true)
    resume: bool = False
    # live progress on stderr: auto (always in a sweep) | off
    progress: str = "auto"
    progress_interval_s: float = 15.0


ConfigStore.instance().store(group="hydra/launcher", name="hexsweep", node=HexsweepLauncherConf,
                             provider="hexsweep")


class JobConfigLauncher(Launcher):
    """What hexsweep's launchers share: the setup, and composing each job's config from a cache
    that the sweeper's validation pass and the launcher share (hexsweep/sweep/compose.py).
    ``launch`` stays abstract, so Hydra's plugin scan does not take this class for a launcher."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context
        from hexsweep.sweep.compose import share_composition

        share_composition(hydra_context.config_loader)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def exit_on_error(fn: Callable[[], Any], reports: bool = False) -> Any:
    """The launcher is an entry point: a bad job config exits 2 with one line; an interrupted
    sweep (reported, resume command printed) exits 130, also when a second SIGTERM (or SIGHUP)
    lands while the report is written. ``reports``: Hydra's end-of-sweep callback writes the
    report after the jobs; a stop request from their end on waits for it (sweep/stopping.py)."""
    from hexsweep.cli import fail
    from hexsweep.errors import HexsweepError
    from hexsweep.sweep import stopping
    from hexsweep.sweep.driver import SweepInterrupted

    stops = (signal.SIGTERM, *stopping.heeded((signal.SIGHUP,)))  # SIGHUP unless nohup ignores it
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in stops}
    ended = False
    try:
        out = fn()
        ended = True
        return out
    except (SweepInterrupted, KeyboardInterrupt):
        raise SystemExit(130) from None
    except HexsweepError as e:
        fail(str(e), getattr(e, "exit_code", 2))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ended and reports:
            stopping.defer()


def reports_at_end(config: Any) -> bool:
    """Whether hexsweep's end-of-sweep callback (the report) runs after this sweep's jobs."""
    from hexsweep.report.end import report_callback

    return report_callback(config) is not None


class HexsweepLauncher(JobConfigLauncher):
    """Hydra's ``launch`` (a list of jobs), and an asynchronous entry point for sweepers that ask
    for the next job the moment one ends (the Optuna and race sweepers): ``launch_async``."""

    async_jobs = True

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        from hexsweep.sweep.launcher import claim_sweep_folder

        exit_on_error(lambda: claim_sweep_folder(self))  # before the sweeper writes into the folder

    def check(self) -> None:
        """ConfigError (one line) for a launcher value that cannot work."""
        from hexsweep.sweep.launcher import check_params

        check_params(self.params)

    def n_jobs_for(self, total: int) -> int:
        """Jobs at once for ``total`` jobs: hydra.launcher.n_jobs, or what the machine holds."""
        from hexsweep.sweep.launcher import n_jobs_for

        return n_jobs_for(self, total)

    def prepare(self, overrides: Sequence[str], num: int) -> DictConfig:
        """Job ``num``'s config, composed and validated by its app (JobConfigError if it must not start)."""
        from hexsweep.sweep.launcher import prepare

        return prepare(self, overrides, num)

    def launch_async(self, feed: Callable[[], DictConfig | None], on_done: Callable[[Any], None], total: int,
                     n_jobs: int | None = None) -> None:
        """Run the configs ``feed`` gives as slots free, ``on_done(outcome)`` for each; raises
        SweepInterrupted (hexsweep.sweep.driver) after Ctrl-C/SIGTERM. The caller turns errors
        into exit codes (``exit_on_error``)."""
        from hexsweep.sweep.launcher import launch_async

        launch_async(self, feed, on_done, total, n_jobs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hexsweep.sweep import launcher

        return exit_on_error(lambda: launcher.launch(self, job_overrides, initial_job_idx),
                             reports=reports_at_end(self.config))
