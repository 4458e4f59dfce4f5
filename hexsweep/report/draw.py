"""``python -m hexsweep.report.draw FOLDER REPORT_ID [--after-fd FD]``: draw a written report's
plots, then write its report.md and report.html again with them (the work: report/drawing.py).

Started by the end of a sweep (``report/end.py``, ``start_drawing``) in a process of its own, so
that the sweep's last line does not wait for its plots. ``--after-fd``: the read end of a pipe
whose write end the driver holds; the drawing starts once it reads end-of-file, when the driver
has exited (its imports meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any


def _stop(signum: int, frame: Any) -> None:
    from hexsweep.report.drawing import Stopped

    raise Stopped(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.report.draw", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("report_id")
    parser.add_argument("--max-curves", type=int, default=200)
    parser.add_argument("--after-fd", type=int, help="wait for end-of-file on this descriptor first")
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.nice(10)  # background work: the user's next command comes first
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # stopped: plots.json and report.md say so
        signal.signal(sig, _stop)
    from hexsweep.report.drawing import Stopped, draw, fail

    folder = args.folder.resolve()
    try:
        if args.after_fd is not None:
            import matplotlib.pyplot  # noqa: F401  (what the drawing needs, while the driver exits)
            import pandas  # noqa: F401

            with contextlib.suppress(OSError):
                while os.read(args.after_fd, 4096):
                    pass
            os.close(args.after_fd)
    except Stopped as e:
        print(f"{e} before drawing", flush=True)
        fail(folder, args.report_id, args.max_curves, f"Stopped: {e}")
        return 1
    return draw(folder, args.report_id, args.max_curves)


if __name__ == "__main__":
    from hexsweep.cli import skip_exit_collection

    skip_exit_collection()
    sys.exit(main())
