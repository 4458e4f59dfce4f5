"""Re-aggregate sweeps: ``python -m hexsweep.analyze <sweep dir> [<sweep dir> ...] [--out DIR]``.

One folder: the table, summary and report are (re)written into it. Several folders (other
sweeps, other machines): one merged table and report, with ``sweep`` and ``host``
columns, into ``--out`` (default ``outputs/analysis/<date>_<time>``).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from hexsweep.cli import fail
from hexsweep.sweep.aggregate import aggregate
from hexsweep.sweep.callbacks import failure_line
from hexsweep.sweep.report import add_group, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (outputs/multirun/...)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (several sweeps)")
    parser.add_argument("--max-curves", type=int, default=200, help="jobs drawn in curves.png")
    args = parser.parse_args(argv)
    for s in args.sweeps:
        if not s.is_dir():
            fail(f"{s} is not a folder: give sweep folders such as outputs/multirun/<date>/<time>")
    sweeps = [s.resolve() for s in args.sweeps]
    df = aggregate(sweeps)
    if df.empty:
        fail(f"no job folders in {', '.join(map(str, sweeps))}: a job folder holds result.json or .hydra/")
    out = args.out or (sweeps[0] if len(sweeps) == 1 else
                       Path("outputs/analysis") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    summary = write_report(df, out.resolve(), sweeps, args.max_curves)
    show = add_group(df)
    cols = [c for c in ("job_num", "host", "label", "status", "objective", "best_epoch", "epochs_run")
            if c in show and (c != "host" or show["host"].nunique() > 1)]
    if len(sweeps) > 1:
        cols.insert(0, "sweep")
        show["sweep"] = show["sweep"].map(lambda p: Path(p).name)
    if "objective" in show:
        show = show.sort_values("objective", ascending=summary["direction"] == "minimize", na_position="last")
    with pd.option_context("display.max_rows", 50, "display.width", 200, "display.max_colwidth", 60):
        print(show[cols].to_string(index=False))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["by_status"].items()))
    print(f"\n{summary['total']} jobs: {counts}")
    if line := failure_line(summary):
        print(line)
    print(f"report: {out / 'report.md'}  table: {out / 'results.csv'}")


if __name__ == "__main__":
    sys.exit(main())
