"""One driver per sweep folder: ``<sweep>/.driver.lock``, held with flock for the driver's life.

The kernel releases the lock when the driver dies, however it dies, so a stale lock never
blocks a resume. A second driver on the same folder (the resume command run while the
first still runs) would restart the first one's live jobs in the same folders; it refuses
with one line naming the live driver, or waits for it when asked to.

The lock file records its holder (pid, host, start time, command), for that line and for
the Optuna sweeper, which asks whether a trial's driver is still alive before it fails the
trial as orphaned.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hexsweep.errors import HexsweepError
from hexsweep.secrets import redact

log = logging.getLogger(__name__)
LOCK_FILE = ".driver.lock"
_held: dict[str, int] = {}  # sweep folder -> fd, for the drivers of this process


class SweepBusy(HexsweepError):
    """Another live driver owns the sweep folder."""


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8") or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def describe(holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since}"


def own(sweep_dir: Path, wait: bool = False, poll_s: float = 1.0) -> None:
    """Take ``sweep_dir`` for this process (a no-op if it already has it); SweepBusy if another
    live driver holds it, unless ``wait`` (then wait for it, one line every minute)."""
    key = str(sweep_dir.resolve())
    if key in _held:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    next_notice = 0.0
    start = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                os.close(fd)
                raise SweepBusy(f"{sweep_dir} is being run by another driver ({describe(holder)}): wait for it to "
                                "end, or add resume=wait to wait for it") from None
            waited = time.monotonic() - start
            if waited >= next_notice:
                log.warning("waiting for the driver of %s (%s) to end", sweep_dir, describe(holder))
                next_notice = waited + 60
            time.sleep(poll_s)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "command": [redact(a) for a in sys.argv]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _held[key] = fd


def driver_alive(sweep_dir: str | os.PathLike | None, host: str | None) -> bool | None:
    """Whether the driver of ``sweep_dir`` still runs: True/False on this host, None when it
    cannot be told (another host, no folder): the caller then trusts other evidence."""
    if not sweep_dir or host != socket.gethostname():
        return None
    path = Path(sweep_dir)
    if str(path.resolve()) in _held:
        return True
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
