"""Post-sweep aggregation as a Hydra callback, plus the function the launcher and analyze share.

Hydra calls ``on_multirun_end`` only if no job raised; hexsweep jobs never raise (they
record their failure), so the callback runs after every sweep, under any launcher. The
hexsweep launcher calls ``report_sweep`` itself when interrupted, since Hydra then skips
the callback.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hexsweep import tracking
from hexsweep.errors import HexsweepError
from hexsweep.jobfolder import RESULT_FILE, read_result
from hexsweep.sweep.ray_options import fix_stock_ray_init

log = logging.getLogger(__name__)


def failure_line(summary: dict[str, Any]) -> str | None:
    failed = summary["failed"]
    if not failed:
        return None
    shown = "; ".join(f"{f['job_num']} ({f['label']}): {f['status']}"
                      + (f": {f['error']}" if f["error"] else "") for f in failed[:3])
    more = f"; ... {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{len(failed)} of {summary['total']} jobs failed: {shown}{more}"


class ReportNotWritten(HexsweepError):
    """The sweep's table or report could not be written (full or read-only disk)."""


def report_sweep(sweep_dir: Path, interrupted: bool = False) -> dict[str, Any]:
    # pandas and the report, only when a report is written: Hydra instantiates this callback in
    # every job too, and pandas starts a thread (jemalloc's) that the job server must not have
    from hexsweep.sweep.aggregate import OK, aggregate
    from hexsweep.sweep.report import write_report

    df = aggregate([sweep_dir])
    try:
        summary = write_report(df, sweep_dir, [sweep_dir])
    except OSError as e:
        raise ReportNotWritten(f"cannot write the sweep's report in {sweep_dir}: {e.strerror or e}; "
                               f"its jobs' folders are intact: python -m hexsweep.analyze {sweep_dir} "
                               "--out <another folder>") from None
    ok = sum(v for k, v in summary["by_status"].items() if k in OK)
    best = summary["best"]
    best_text = (f"; best: job {best['job_num']} ({best['label']}) "
                 f"{summary['objective_metric']}={best['objective']:.4f}" if best else "")
    if summary.get("provenance_warning"):
        print(f"[hexsweep] warning: {summary['provenance_warning']}", file=sys.stderr, flush=True)
    pruned = summary["by_status"].get("pruned", 0)  # a pruned trial ended as planned, but did not complete
    how = f"ended ({ok - pruned} completed, {pruned} pruned)" if pruned else "completed"
    print(f"[hexsweep] {ok} of {summary['total']} jobs {how}{best_text}\n"
          f"[hexsweep] report: {sweep_dir / 'report.md'}", file=sys.stderr, flush=True)
    if (line := failure_line(summary)) and not interrupted:
        print(f"hexsweep: {line}", file=sys.stderr, flush=True)
    return summary


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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
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
        if self._pending is not None:
            self._pending = None
            atexit.unregister(self._finish_at_exit)
            finish_tracking(config, sweep_dir)
        if not sweep_dir.exists():
            return
        optuna_search = "hexsweep_optuna" in str(config.hydra.sweeper.get("_target_", ""))
        try:
            summary = report_sweep(sweep_dir, interrupted=optuna_search)
        except ReportNotWritten as e:  # a Hydra callback is this process's last word: one line, exit 1
            print(f"hexsweep: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        if summary["failed"] and not optuna_search:
            raise SystemExit(1)
        if summary["failed"]:  # failed trials are data to a search; max_failure_rate decides
            print(f"[hexsweep] {failure_line(summary)}", file=sys.stderr)
