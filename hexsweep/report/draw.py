"""``python -m hexsweep.report.draw FOLDER REPORT_ID``: draw a written report's plots, then write
its report.md and report.html again with them.

Started by the end of a sweep (``report/end.py``, ``start_drawing``), after the sweep's table,
summary and report are written, in a process of its own so that the sweep's last line does
not wait for them. It draws from that report's own table (``results.parquet``) and summary,
and leaves everything alone once a newer report has replaced the one it was started for (a
resumed sweep's, ``analyze``'s: ``report_id`` in summary.json). How it went is in
``plots.json``; a failure is also written in report.md, where the plots would be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hexsweep.atomic import atomic_write_json
from hexsweep.report.end import PENDING_PLOTS, PLOTS_JSON


class Stopped(Exception):
    """SIGTERM or SIGHUP while drawing: recorded as a failure, like any other."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(f"stopped by {signal.Signals(signum).name}")


def _summary(folder: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _status(folder: Path, report_id: str, state: str, **more: Any) -> None:
    with contextlib.suppress(OSError):  # a full disk: plots.log still holds what happened
        atomic_write_json(folder / PLOTS_JSON, {"state": state, "report_id": report_id, "pid": os.getpid(),
                                                "at": datetime.now(UTC).isoformat(timespec="seconds"), **more})


def draw_pending(folder: Path) -> tuple[list[str], dict[str, str]]:
    """A sweeper's own plots left to this process (``PENDING_PLOTS``): an Optuna search's, from its
    study's storage, and a race's, from race.json. The files written, and the error of each part
    that failed (they are a bonus: the report's own plots are still shown)."""
    try:
        pending = json.loads((folder / PENDING_PLOTS).read_text())
    except (OSError, ValueError):
        return [], {}  # nothing left to draw: a list sweep, or drawn by the sweeper itself
    written: list[str] = []
    errors: dict[str, str] = {}
    parts = {"optuna_study": _draw_study, "race": _draw_race}
    for key, draw_part in parts.items():
        if isinstance(pending, dict) and pending.get(key):
            try:
                written += draw_part(folder, pending[key])
            except Exception as e:
                traceback.print_exc()
                errors[key] = f"{type(e).__name__}: {e}".splitlines()[0]
    (folder / PENDING_PLOTS).unlink(missing_ok=True)
    return written, errors


def _draw_study(folder: Path, name: str) -> list[str]:
    import optuna

    from hexsweep.report.study import study_plots
    from hexsweep.search.storage import STORAGE_ENV, open_storage

    spec = os.environ.get(STORAGE_ENV)
    if not spec:
        raise RuntimeError(f"the storage of study {name!r} is unknown here ({STORAGE_ENV} is not set)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(spec, read_only=True))
    return [p.name for p in study_plots(study, folder)]


def _draw_race(folder: Path, _: Any) -> list[str]:
    from hexsweep.race.output import RACE_JSON, RACE_PNG, plot_race, write_race_md

    summary = json.loads((folder / RACE_JSON).read_text())
    plotted = plot_race(summary, folder / RACE_PNG)
    write_race_md(summary, folder, plotted)
    return [RACE_PNG] if plotted else []


def draw(folder: Path, report_id: str, max_curves: int) -> int:
    """Draw and rewrite the pages; the exit status (0 also when superseded)."""
    import pandas as pd

    from hexsweep.report.files import draw_plots, plot_note, write_pages

    summary = _summary(folder)
    if summary is None or summary.get("report_id") != report_id:
        print(f"the report in {folder} is no longer the one these plots were for: nothing drawn", flush=True)
        _status(folder, report_id, "superseded")
        return 0
    _status(folder, report_id, "drawing")
    df = None
    try:
        df = pd.read_parquet(folder / "results.parquet")
        made = draw_plots(df, summary, max_curves)
        more, errors = draw_pending(folder)
        if (_summary(folder) or {}).get("report_id") != report_id:  # replaced while we drew
            _status(folder, report_id, "superseded")
            return 0
        write_pages(df, summary, made, max_curves)
    except Exception as e:  # whatever it is, it is said where the plots would be, and in plots.json
        traceback.print_exc()
        error = f"{type(e).__name__}: {e}".splitlines()[0]
        _status(folder, report_id, "failed", error=error)
        if df is not None and (_summary(folder) or {}).get("report_id") == report_id:
            with contextlib.suppress(Exception):
                write_pages(df, summary, {}, max_curves, plot_note("background", folder, error))
        return 1
    drawn = sorted([name for name, was_made in made.items() if was_made] + more)
    _status(folder, report_id, "done", plots=drawn, **({"errors": errors} if errors else {}))
    print(f"plots drawn: {', '.join(drawn) or 'none to draw'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.report.draw", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("report_id")
    parser.add_argument("--max-curves", type=int, default=200)
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.nice(10)  # background work: the user's next command comes first
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stopped: plots.json and report.md say so
        signal.signal(sig, _stop)
    return draw(args.folder.resolve(), args.report_id, args.max_curves)


if __name__ == "__main__":
    from hexsweep.cli import skip_exit_collection

    skip_exit_collection()
    sys.exit(main())
