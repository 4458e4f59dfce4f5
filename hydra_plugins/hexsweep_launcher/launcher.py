"""Registration of the hexsweep launcher (``hydra/launcher=hexsweep``, the default of hexsweep.train).

Hydra imports every plugin module at start-up, so this module stays thin: the work is in
hexsweep/sweep/launcher.py, imported when a sweep actually launches.
"""


import math
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

    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
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
    callbacks = (config.hydra.get("callbacks") or {}) if config is not None else {}
    return any(str(c.get("_target_", "")).endswith(".SweepReport") for c in callbacks.values())


def check_params(params: dict) -> None:
    """One line, before any job starts, for a launcher value that cannot work."""
    from hexsweep.cli import fail

    for key in ("timeout_s", "stall_timeout_s"):
        v = params.get(key)
        if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            fail(f"hydra.launcher.{key}={v} is invalid: allowed a number of seconds > 0, or null (no limit)")
    v = params.get("kill_grace_s")
    if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
        fail(f"hydra.launcher.kill_grace_s={v} is invalid: allowed a number of seconds >= 0")
    v = params.get("slots_per_gpu")
    if v is not None and not (isinstance(v, int) and v > 0):
        fail(f"hydra.launcher.slots_per_gpu={v} is invalid: allowed an integer > 0, or null (the device's default)")
    v = params.get("n_jobs")
    if v is not None and not (isinstance(v, int) and v > 0):
        fail(f"hydra.launcher.n_jobs={v} is invalid: allowed an integer > 0, or null (what the machine holds)")


class HexsweepLauncher(JobConfigLauncher):
    async_jobs = True  # the Optuna sweeper may feed it one trial at a time (sweep/driver.py)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hexsweep.sweep import launcher

        check_params(self.params)
        return exit_on_error(lambda: launcher.launch(self, job_overrides, initial_job_idx),
                             reports=reports_at_end(self.config))
