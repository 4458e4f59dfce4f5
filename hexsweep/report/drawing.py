"""Drawing a written report's plots after the sweep's last line (the core of
``python -m hexsweep.report.draw``, started by ``report/end.py``).

The drawing waits for its driver to exit (the end of a pipe whose other end only the driver
holds): what the driver writes after its report (a search's or a race's own results, after an
interrupt) is then all there, and the drawing's imports overlap the driver's exit. It draws into
a private folder and publishes under the report's lock (``files.report_lock``), and only while
summary.json still names the report it was started for (``report_id``): a newer report (a
resumed sweep's, ``analyze``'s) is never given an older drawing's figures. A folder that is gone
(deleted, moved) stays gone. How it went is in ``plots.json``, which it writes only while it is
that report's, and a failure also goes where the plots would be in report.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hexsweep.atomic import atomic_write_json
from hexsweep.report.end import PENDING_PLOTS, PLOTS_JSON
from hexsweep.report.files import draw_plots, plot_note, report_lock, write_pages


class Stopped(BaseException):
    """SIGTERM, SIGHUP or SIGINT while drawing: a BaseException, so that no ``except Exception``
    on the way (a sweeper's plot that failed is only noted) can swallow it; recorded as failed."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _current(folder: Path, report_id: str) -> bool:
    summary = _read_json(folder / "summary.json")
    return isinstance(summary, dict) and summary.get("report_id") == report_id


def _status(folder: Path, report_id: str, state: str, **more: Any) -> None:
    """plots.json, while it still describes this report's drawing (under the report's lock)."""
    mine = _read_json(folder / PLOTS_JSON)
    if isinstance(mine, dict) and mine.get("report_id") not in (None, report_id):
        return  # a newer report's drawing has it
    with contextlib.suppress(OSError):  # a full disk: plots.log still holds what happened
        atomic_write_json(folder / PLOTS_JSON, {"state": state, "report_id": report_id, "pid": os.getpid(),
                                                "at": datetime.now(UTC).isoformat(timespec="seconds"), **more})


def _draw_pending(folder: Path, pending: Any, into: Path) -> tuple[list[str], dict[str, str]]:
    """A sweeper's own plots left to the drawing (``PENDING_PLOTS``): an Optuna search's, from its
    study's storage, and a race's, from race.json. The files drawn, and the error of each part
    that failed (they are a bonus: the report's own plots are still shown)."""
    written: list[str] = []
    errors: dict[str, str] = {}
    for key, draw_part in (("optuna_study", _draw_study), ("race", _draw_race)):
        if isinstance(pending, dict) and pending.get(key):
            try:
                written += draw_part(folder, pending[key], into)
            except Exception as e:
                traceback.print_exc()
                errors[key] = f"{type(e).__name__}: {e}".splitlines()[0]
    return written, errors


def _draw_study(folder: Path, name: str, into: Path) -> list[str]:
    import optuna

    from hexsweep.report.study import study_plots
    from hexsweep.search.storage import STORAGE_ENV, open_storage

    spec = os.environ.get(STORAGE_ENV)
    if not spec:
        raise RuntimeError(f"the storage of study {name!r} is unknown here ({STORAGE_ENV} is not set)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(spec, read_only=True))
    return [p.name for p in study_plots(study, into)]


def _draw_race(folder: Path, _: Any, into: Path) -> list[str]:
    from hexsweep.race.output import RACE_JSON, RACE_PNG, plot_race

    return [RACE_PNG] if plot_race(json.loads((folder / RACE_JSON).read_text()), into / RACE_PNG) else []


def _publish(folder: Path, into: Path, drawn: list[str]) -> None:
    """Move the drawn figures in (under the report's lock), and race.md with its figure."""
    for name in drawn:
        os.replace(into / name, folder / name)
    from hexsweep.race.output import RACE_JSON, RACE_PNG, write_race_md

    if RACE_PNG in drawn and isinstance(race := _read_json(folder / RACE_JSON), dict):
        write_race_md(race, folder, True)


def draw(folder: Path, report_id: str, max_curves: int) -> int:
    """Draw the report's plots (and a sweeper's own), publish them and rewrite the report's
    pages; the exit status (0 also when the report was replaced or the folder is gone)."""
    import pandas as pd

    into = folder / f".plots-{report_id[:12]}"
    try:
        with report_lock(folder, give_up=True):  # a consistent snapshot: the report's writer holds the lock
            if not _current(folder, report_id):
                print(f"the report in {folder} is no longer the one these plots were for: nothing drawn", flush=True)
                _status(folder, report_id, "superseded")
                return 0
            summary = _read_json(folder / "summary.json")
            df = pd.read_parquet(folder / "results.parquet")
            pending = _read_json(folder / PENDING_PLOTS)
            _status(folder, report_id, "drawing")
            into.mkdir(exist_ok=True)
        made = draw_plots(df, summary, max_curves, into=into)
        more, errors = _draw_pending(folder, pending, into)
        drawn = sorted([name for name, was_made in made.items() if was_made] + more)
        with report_lock(folder, give_up=True):
            if not _current(folder, report_id):
                _status(folder, report_id, "superseded")
                return 0
            _publish(folder, into, drawn)
            write_pages(df, summary, made, max_curves)
            if _read_json(folder / PENDING_PLOTS) == pending:  # not a newer sweeper's
                (folder / PENDING_PLOTS).unlink(missing_ok=True)
            _status(folder, report_id, "done", plots=drawn, **({"errors": errors} if errors else {}))
    except (Exception, Stopped) as e:
        if not folder.is_dir():  # deleted or moved meanwhile: nothing to say it in, nothing made again
            print(f"{folder} is gone: nothing drawn", flush=True)
            return 0
        traceback.print_exc()
        fail(folder, report_id, max_curves, f"{type(e).__name__}: {e}".splitlines()[0])
        return 1
    finally:
        shutil.rmtree(into, ignore_errors=True)
    print(f"plots drawn: {', '.join(drawn) or 'none to draw'}", flush=True)
    return 0


def fail(folder: Path, report_id: str, max_curves: int, error: str) -> None:
    """Say that the plots could not be drawn: in plots.json, and in report.md where they would be
    (while the report is still the one they were for)."""
    import pandas as pd

    with contextlib.suppress(Exception), report_lock(folder, give_up=True):
        if _current(folder, report_id):
            _status(folder, report_id, "failed", error=error)
            write_pages(pd.read_parquet(folder / "results.parquet"), _read_json(folder / "summary.json"), {},
                        max_curves, plot_note("background", folder, error))
