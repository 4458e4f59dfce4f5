"""The end of a sweep: its report, its last line and its exit status.

Shared by Hydra's end-of-sweep callback (``sweep/callbacks.py``), the launcher's report on
interrupt (the app's ``report``) and ``python -m hexsweep.analyze`` (``failure_line``).

The plots come last, and at a terminal after the sweep's last line: a process of their own
(``python -m hexsweep.report.draw``, the work in ``report/drawing.py``) draws them once the
driver has exited and writes report.md again with them, so that neither the last line nor the
exit status waits for figures nobody has asked to see yet (a race's, and an Optuna search's
when its study is in a storage that process can open). It records how it went in
``plots.json`` (drawing, done, failed with the error, superseded) and its output in
``plots.log``; a failure is also written where the plots would be in report.md.
``hydra.callbacks.sweep_report.plots``: ``auto`` (the default: background at a terminal, else
wait), ``background``, ``wait`` (before the last line) or ``off``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hexsweep.atomic import atomic_write_json
from hexsweep.errors import ConfigError, HexsweepError

PLOTS = ("auto", "background", "wait", "off")
PLOTS_JSON = "plots.json"  # how the background drawing went: {"state": drawing|done|failed|superseded, ...}
PLOTS_LOG = "plots.log"  # what it printed
PLOTS_KEY = "hydra.callbacks.sweep_report.plots"
# a sweeper's own plots left to the same process: {"optuna_study": name} (an Optuna search's, from
# the storage its jobs reach: search/storage.py's STORAGE_ENV, never through a file), {"race": true}
PENDING_PLOTS = "plots_pending.json"
# the drawings started by this process, each with the write end of the pipe it waits on: kept
# open until this process exits (a Popen collected while its process runs would also warn)
_drawers: list[tuple[subprocess.Popen, int]] = []


def check_plots(value: Any) -> str:
    if value is False:  # YAML reads an unquoted `off` as false
        return "off"
    if value not in PLOTS:
        raise ConfigError(f"{PLOTS_KEY}={value!r} is invalid: allowed auto (background at a terminal, else "
                          "wait), background (drawn after the sweep's last line), wait (before it) or off")
    return value


def resolve_plots(value: Any) -> str:
    """``auto``: after the last line (background) when a person is at the terminal; else (a batch
    job, CI, a pipe) before it, since whatever runs the sweep may end every process it left,
    the drawing with them, once the command returns (Slurm ends a job's processes with it)."""
    value = check_plots(value)
    if value == "auto":
        return "background" if sys.stderr.isatty() else "wait"
    return value


def defer_plots(sweep_dir: Path, **what: Any) -> None:
    """Leave a sweeper's own plots (``what``: see ``PENDING_PLOTS``) to the report's drawing."""
    atomic_write_json(sweep_dir / PENDING_PLOTS, what)


def report_callback(config: Any) -> Any:
    """The sweep's report callback (``sweep/callbacks.py: SweepReport``) in ``config``'s
    ``hydra.callbacks``, or None: no report after this sweep's jobs."""
    callbacks = (config.hydra.get("callbacks") or {}) if config is not None else {}
    return next((c for c in callbacks.values() if str(c.get("_target_", "")).endswith(".SweepReport")), None)


def plots_of(config: Any) -> str:
    """The plots setting of the sweep's report callback in ``config``; ``wait`` without one (nothing
    would draw them later)."""
    callback = report_callback(config)
    return "wait" if callback is None else resolve_plots(callback.get("plots", "auto"))


class ReportNotWritten(HexsweepError):
    """The sweep's table or report could not be written (full or read-only disk)."""


def failure_line(summary: dict[str, Any]) -> str | None:
    failed = summary["failed"]
    if not failed:
        return None
    shown = "; ".join(f"{f['job_num']} ({f['label']}): {f['status']}"
                      + (f": {f['error']}" if f["error"] else "") for f in failed[:3])
    more = f"; ... {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"{len(failed)} of {summary['total']} jobs failed: {shown}{more}"


def report_sweep(sweep_dir: Path, interrupted: bool = False, plots: str = "wait") -> dict[str, Any]:
    """Write the sweep's table and report, print its last line; returns the report's summary.
    ``plots``: see the module's note."""
    # pandas and the report, only when a report is written: Hydra instantiates the callback in
    # every job too, and pandas starts a thread (jemalloc's) that the job server must not have
    from hexsweep.report.aggregate import OK, aggregate
    from hexsweep.report.files import write_report

    df = aggregate([sweep_dir])
    try:
        summary = write_report(df, sweep_dir, [sweep_dir], plots=plots)
        drawing = plots == "background" and start_drawing(sweep_dir, summary)
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
    later = (" (plots off)" if plots == "off" else
             f" (its plots are being drawn in the background: {sweep_dir / PLOTS_JSON})" if drawing else "")
    print(f"[hexsweep] {ok} of {summary['total']} jobs {how}{best_text}\n"
          f"[hexsweep] report: {sweep_dir / 'report.md'}{later}", file=sys.stderr, flush=True)
    if (line := failure_line(summary)) and not interrupted:
        print(f"hexsweep: {line}", file=sys.stderr, flush=True)
    return summary


def start_drawing(out_dir: Path, summary: dict[str, Any], max_curves: int = 200) -> bool:
    """Start the process that draws the report's plots (``python -m hexsweep.report.draw``): in a
    session of its own, so that a Ctrl-C meant for the next command does not reach it, with no
    pipe of the caller's (a caller reading our output to its end does not wait for it). It starts
    drawing once this process has exited (report/drawing.py). If it cannot start, the plots are
    drawn here; returns whether they are drawn in the background."""
    atomic_write_json(out_dir / PLOTS_JSON, {"state": "drawing", "report_id": summary["report_id"],
                                             "started": datetime.now(UTC).isoformat(timespec="seconds")})
    for proc, fd in [d for d in _drawers if d[0].poll() is not None]:  # reap the finished (tests)
        _drawers.remove((proc, fd))
    read_end, write_end = os.pipe()  # not inheritable: only the drawing gets its end (pass_fds)
    try:
        with open(out_dir / PLOTS_LOG, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hexsweep.report.draw", str(out_dir), summary["report_id"],
                 "--max-curves", str(max_curves), "--after-fd", str(read_end)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=(read_end,))
        _drawers.append((proc, write_end))
        return True
    except OSError:  # no process to spare (fork refused): draw them now
        os.close(write_end)
        from hexsweep.report.drawing import draw

        draw(out_dir, summary["report_id"], max_curves)
        return False
    finally:
        os.close(read_end)


def release_drawings() -> None:
    """Let the drawings started by this process begin now instead of at its exit (a long-lived
    process that drives sweeps itself: tests)."""
    while _drawers:
        with contextlib.suppress(OSError):
            os.close(_drawers.pop()[1])


def end_sweep(sweep_dir: Path, search: bool, plots: str = "wait") -> int:
    """The report after a finished sweep, and the sweep's exit status.

    A list sweep with a failed job exits 1. A search's failed trials are data
    (``max_failure_rate`` decides), so they are listed and it exits 0. A report that cannot
    be written is the process's last word: one line, exit 1.
    """
    try:
        summary = report_sweep(sweep_dir, interrupted=search, plots=plots)
    except ReportNotWritten as e:
        print(f"hexsweep: error: {e}", file=sys.stderr)
        return 1
    if summary["failed"] and not search:
        return 1
    if summary["failed"]:
        print(f"[hexsweep] {failure_line(summary)}", file=sys.stderr)
    return 0
