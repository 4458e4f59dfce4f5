"""A stop request that comes when nothing is left to stop: after the sweep's last job ended.

Ctrl-C, SIGTERM or SIGHUP (a closed terminal) during a sweep stop its jobs, and the driver then
writes the report and exits 130 (sweep/driver.py). Once the last job has ended, the driver is
writing the report, the table and the trackers' parent run (Hydra's ``on_multirun_end``):
killing it then would lose exactly those, and leave an MLflow parent run RUNNING. So a
request from then on is remembered, the end is written, and the sweep then ends as an
interrupted one does: the resume line, exit status 130. A second request skips what is left
of the end at once.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hexsweep.secrets import redact

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def heeded(signals: tuple[int, ...] = STOP_SIGNALS) -> list[int]:
    """The stop signals this process was not told to ignore: under ``nohup`` SIGHUP stays
    ignored (the sweep survives its terminal), as does SIGINT for a job started with ``&``
    by a non-interactive shell."""
    return [sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN]

_requested: str | None = None
_previous: dict[int, Any] | None = None


def _remember(signum: int, frame: Any) -> None:
    global _requested
    name = signal.Signals(signum).name
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {name}")
    _requested = name
    print(f"\n[hexsweep] {name}: the jobs have ended; writing the report first ({name} again skips it)",
          file=sys.stderr, flush=True)


def defer() -> None:
    """From now on a stop request is remembered, not obeyed (until ``finishing`` ends)."""
    global _previous
    if _previous is None:
        _previous = {sig: signal.signal(sig, _remember) for sig in heeded()}


def _restore() -> None:
    global _previous
    if _previous is not None:
        for sig, handler in _previous.items():
            signal.signal(sig, handler)
        _previous = None


def resume_command(program: str, config: DictConfig, sweep_dir: Path, again: Sequence[str]) -> str:
    """The command that continues an interrupted sweep: the same program and command-line
    overrides (the app's and Hydra's, from ``hydra.overrides``), in its folder, with the app's
    resume overrides ``again``; each argument shell-quoted, ready to paste. A password in a URL
    (a PostgreSQL storage) is masked, as everywhere a command is written down: the line goes to
    terminals and logs; the user types it again (or keeps it out of the command line)."""
    def key(o: str) -> str:
        return o.partition("=")[0].lstrip("+~")

    drop = {"hydra.sweep.dir", "hydra.mode", *(key(o) for o in again)}
    given = [o for part in ("task", "hydra") for o in OmegaConf.select(config, f"hydra.overrides.{part}", default=[])
             if key(o) not in drop]
    args = [*given, f"hydra.sweep.dir={sweep_dir}", *again]
    return " ".join([program, "-m", *(shlex.quote(redact(a)) for a in args)])


def say_resume(command: str) -> None:
    print(f"[hexsweep] resume with: {command}", file=sys.stderr, flush=True)


@contextmanager
def finishing(resume: str) -> Iterator[None]:
    """Write the end of a finished sweep; a stop request meanwhile (or since ``defer``) is
    honoured after it: the resume line (``resume``, the command) and exit status 130 replace the
    sweep's own status."""
    global _requested
    defer()
    try:
        try:
            yield
        except KeyboardInterrupt:  # the second request: what is left of the end is skipped
            print("[hexsweep] report skipped (interrupted again)", file=sys.stderr, flush=True)
        except SystemExit:  # the sweep's own exit status (failed jobs): a stop request outranks it
            if _requested is None:
                raise
    finally:
        _restore()
        requested, _requested = _requested, None
    if requested is not None:
        say_resume(resume)
        raise SystemExit(130)
