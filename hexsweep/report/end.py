"""The end of a sweep: its report, its last line and its exit status.

Shared by Hydra's end-of-sweep callback (``sweep/callbacks.py``), the launcher's report on
interrupt (the app's ``report``) and ``python -m hexsweep.analyze`` (``failure_line``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hexsweep.errors import HexsweepError


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


def report_sweep(sweep_dir: Path, interrupted: bool = False) -> dict[str, Any]:
    """Write the sweep's table and report, print its last line; returns the report's summary."""
    # pandas and the report, only when a report is written: Hydra instantiates the callback in
    # every job too, and pandas starts a thread (jemalloc's) that the job server must not have
    from hexsweep.report.aggregate import OK, aggregate
    from hexsweep.report.files import write_report

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


def end_sweep(sweep_dir: Path, search: bool) -> int:
    """The report after a finished sweep, and the sweep's exit status.

    A list sweep with a failed job exits 1. A search's failed trials are data
    (``max_failure_rate`` decides), so they are listed and it exits 0. A report that cannot
    be written is the process's last word: one line, exit 1.
    """
    try:
        summary = report_sweep(sweep_dir, interrupted=search)
    except ReportNotWritten as e:
        print(f"hexsweep: error: {e}", file=sys.stderr)
        return 1
    if summary["failed"] and not search:
        return 1
    if summary["failed"]:
        print(f"[hexsweep] {failure_line(summary)}", file=sys.stderr)
    return 0
