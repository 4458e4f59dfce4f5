"""Hydra's end-of-sweep callback, wired to the report (``hexsweep/report/end.py``) and MLflow.

Hydra calls ``on_multirun_end`` only if no job raised; hexsweep jobs never raise (they
record their failure), so the callback runs after every sweep, under any launcher. The
hexsweep launcher has the report written itself when interrupted, since Hydra then skips
the callback.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hexsweep import tracking
from hexsweep.cli import skip_exit_collection
from hexsweep.jobfolder import RESULT_FILE, read_result
from hexsweep.report.end import end_sweep, resolve_plots
from hexsweep.sweep import stopping
from hexsweep.sweep.ray_options import fix_stock_ray_init
from hexsweep.sweep.train_app import TRAIN_APP

log = logging.getLogger(__name__)


def finish_tracking(config: DictConfig, sweep_dir: Path, aborted: bool = False) -> None:
    """End the sweep's MLflow runs: those its jobs could not end (killed, stalled) with their
    folder's status, then the parent run (KILLED when the sweep was aborted)."""
    if tracking.read_parent(sweep_dir) is None:
        return
    records = [r for p in sorted(sweep_dir.rglob(RESULT_FILE)) if (r := read_result(p.parent))]
    tracking.finish_sweep(config.logger.mlflow, sweep_dir, records, aborted)


class SweepReport(Callback):
    """The report after every sweep; with logger=mlflow also the sweep's parent run, created
    before the first job (``<sweep>/mlflow.json``) and ended after the last. A sweep that ends
    without ``on_multirun_end`` (interrupted, a job config refused) ends it at exit."""

    _pending: tuple[DictConfig, Path, int] | None = None

    def __init__(self, plots: str = "auto") -> None:
        # background: the plots are drawn after the sweep's last line; wait: before it; off: never;
        # auto: background at a terminal, else wait (report/end.py)
        self.plots = resolve_plots(plots)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        skip_exit_collection()  # a single run's process: it exits when the job ends

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        skip_exit_collection()  # the driver's process (jobs leave through os._exit)
        fix_stock_ray_init(config)
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        if tracking.start_sweep(config, sweep_dir) is not None:
            self._pending = (config, sweep_dir, os.getpid())
            atexit.register(self._finish_at_exit)

    def _finish_at_exit(self) -> None:
        if self._pending is not None and self._pending[2] == os.getpid():
            config, sweep_dir, _ = self._pending
            self._pending = None
            finish_tracking(config, sweep_dir, aborted=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        resume = stopping.resume_command(TRAIN_APP.program(), config, sweep_dir, TRAIN_APP.resume_overrides())
        with stopping.finishing(resume):  # a stop request now waits for the report (sweep/stopping.py)
            if self._pending is not None:
                self._pending = None
                atexit.unregister(self._finish_at_exit)
                finish_tracking(config, sweep_dir)
            if not sweep_dir.exists():
                return
            # a search's (Optuna's, a race's) failed jobs are data: its sweeper decides how it ends
            target = str(config.hydra.sweeper.get("_target_", ""))
            search = "hexsweep_optuna" in target or "hexsweep_race" in target
            if status := end_sweep(sweep_dir, search=search, plots=self.plots):
                raise SystemExit(status)
