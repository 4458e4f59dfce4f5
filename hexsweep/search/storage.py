"""Where studies live: the embedded default (an Optuna journal file) or any RDB URL.

Default: ``JournalStorage(JournalFileBackend("<outputs>/optuna/studies.journal"))``. Measured
here (docs/design.md): 8 concurrent writer processes, 320 trials: SQLite 30.9 s, the
journal file 6.5 s, both without lock errors at that load; SQLite also must never sit on
NFS. Optuna's CLI and dashboard read the journal with ``--storage-class JournalFileBackend``.

A storage spec is an RDB URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``) or a
path to a ``.journal`` file. Passwords in URLs are never printed: ``redact`` masks them.

``open_storage(spec, read_only=True)`` (the ``hexsweep.study`` queries) never creates
anything: a journal file, SQLite file or study tables that do not exist are a one-line
error. Before a journal is opened for writing, a torn last line (a writer killed mid-write
leaves one without its newline, and Optuna's next append would glue onto it and make the
journal unreadable) is cut off under Optuna's journal lock; the untouched original is kept
beside it as ``<file>.torn-<timestamp>`` and a warning names both files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from hexsweep.errors import ConfigError
from hexsweep.secrets import redact  # noqa: F401  (the storage's users import it from here)

DEFAULT_JOURNAL = "optuna/studies.journal"
STORAGE_ENV = "HEXSWEEP_OPTUNA_STORAGE"  # how the sweeper hands the storage to its jobs
URL_RE = re.compile(r"^[a-z][a-z0-9+]*://")
TAIL_CHUNK = 1 << 16

log = logging.getLogger(__name__)


def default_storage(outputs: str | os.PathLike) -> str:
    return str(Path(outputs).resolve() / DEFAULT_JOURNAL)


def is_url(spec: str) -> bool:
    return bool(URL_RE.match(spec))


def open_storage(spec: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 retry_failed: int = 0, read_only: bool = False) -> BaseStorage:
    """Open a storage; ``read_only``: it must exist already (nothing is created), else ConfigError."""
    if is_url(spec):
        if read_only:
            _check_rdb_exists(spec)
        kwargs: dict = {"skip_table_creation": True} if read_only else {}
        if heartbeat_interval and not spec.startswith("sqlite"):
            kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
            if retry_failed:
                kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=retry_failed)
        for attempt in range(4):
            try:
                return RDBStorage(spec, **kwargs)
            except Exception as e:  # SQLAlchemy and drivers raise many types; the message matters
                # Optuna creates its tables on first use, and two drivers starting together on an
                # empty database race on it (a unique-key violation): the loser retries
                racing = "UniqueViolation" in str(e) or "already exists" in str(e)
                if not racing or attempt == 3:
                    raise ConfigError(f"storage {redact(spec)} cannot be opened: {str(e).splitlines()[0]}") from None
                time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")
    path = Path(spec).expanduser()
    if path.suffix != ".journal":
        raise ConfigError(f"storage {spec!r} is invalid: allowed an RDB URL (sqlite:///..., postgresql://...) "
                          "or a path ending in .journal")
    if read_only:
        if not path.is_file():
            raise ConfigError(f"no storage at {spec}: {missing(path)}; {NOTHING_CREATED}")
        # Optuna skips a last line it cannot parse (a write in progress), and so would read a
        # file of one such line as an empty journal: it is not a journal
        if _torn_tail(path) == 0 and (bad := first_bad_line(path)):
            raise ConfigError(f"storage {path} is damaged or not an Optuna journal: {bad}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(path)
    try:
        # JournalStorage replays the whole file here, and a damaged or foreign one fails deep in
        # Optuna with whatever its replay hits: UnicodeDecodeError, JSONDecodeError, KeyError,
        # TypeError, "AssertionError: Should not reach." (an unknown op_code)
        return JournalStorage(JournalFileBackend(str(path)))
    except (ValueError, AssertionError, LookupError, TypeError, AttributeError) as e:
        raise ConfigError(f"storage {path} is damaged or not an Optuna journal: {journal_fault(path, e)}") from None
    except OSError as e:
        raise ConfigError(f"storage {path} cannot be read: {e.strerror or e}") from None


def first_bad_line(path: Path) -> str | None:
    """The journal's first line that is not a UTF-8 JSON object with an op_code, and why."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                return f"line {number} is not UTF-8 text"
            except ValueError:
                return f"line {number} is not JSON"
            if not isinstance(record, dict) or "op_code" not in record:
                return f"line {number} is not an Optuna journal record (no op_code)"
    return None


def journal_fault(path: Path, error: BaseException) -> str:
    """Why Optuna could not replay a journal: its first bad line, else what Optuna raised (a
    record it cannot apply)."""
    if bad := first_bad_line(path):
        return bad
    if isinstance(error, AssertionError):  # Optuna's "Should not reach.": an op_code it does not know
        return f"a record with an op_code this Optuna ({optuna.__version__}) does not know"
    what = str(error).splitlines()[0] if str(error) else ""
    return f"a record Optuna cannot replay ({type(error).__name__}{': ' + what if what else ''})"


NOTHING_CREATED = ("check --storage (a query never creates a storage; "
                   "a search does: python -m hexsweep.train -m search=...)")


def missing(path: Path) -> str:
    return "it is a folder, not a file" if path.is_dir() else "the file does not exist"


def _check_rdb_exists(spec: str) -> None:
    """Without creating anything: a SQLite URL's file must exist, and the database must hold Optuna's tables."""
    import sqlalchemy  # ~0.3 s, and only an RDB storage needs it (not a journal, not a job's start-up)

    try:
        url = sqlalchemy.engine.make_url(spec)
    except sqlalchemy.exc.ArgumentError as e:
        raise ConfigError(f"storage {redact(spec)} is invalid: {e}") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database).expanduser()
        if not db.is_file():
            raise ConfigError(f"no storage at {redact(spec)}: {missing(db)}; {NOTHING_CREATED}")
    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as e:  # a missing driver, a bad option
        raise ConfigError(f"storage {redact(spec)} cannot be opened: {str(e).splitlines()[0]}") from None
    try:
        has_studies = sqlalchemy.inspect(engine).has_table("studies")
    except Exception as e:  # unreachable server, bad credentials, no such database
        raise ConfigError(f"storage {redact(spec)} cannot be opened: {str(e).splitlines()[0]}") from None
    finally:
        engine.dispose()
    if not has_studies:
        raise ConfigError(f"no storage at {redact(spec)}: the database holds no Optuna tables; {NOTHING_CREATED}")


def _last_line_start(f: BinaryIO, size: int) -> int:
    """Offset of the first byte of the file's last line (which may lack its newline)."""
    f.seek(size - 1)
    pos = size - 1 if f.read(1) == b"\n" else size
    while pos > 0:
        start = max(0, pos - TAIL_CHUNK)
        f.seek(start)
        i = f.read(pos - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def _torn_tail(path: Path) -> int | None:
    """Where the torn last line of a journal starts, or None if the last line is whole."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        start = _last_line_start(f, size)
        f.seek(start)
        line = f.read()
    if line.endswith(b"\n"):
        try:
            if isinstance(json.loads(line), dict):
                return None
        except ValueError:  # not JSON, or not UTF-8
            pass
    return start


def repair_torn_tail(path: Path) -> Path | None:
    """Cut a torn last line off a journal file before anyone appends to it; return the backup, if any.

    The check runs under Optuna's own journal lock, so a writer's append in progress is
    never mistaken for a torn line.
    """
    if not path.is_file() or _torn_tail(path) is None:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        start = _torn_tail(path)
        if start is None:
            return None
        backup = path.with_name(f"{path.name}.torn-{datetime.now():%Y%m%d-%H%M%S-%f}")
        shutil.copy2(path, backup)
        size = path.stat().st_size
        os.truncate(path, start)
    finally:
        lock.release()
    log.warning("Optuna journal %s ended in a torn line (%d bytes from an interrupted write): cut it off; "
                "the original is kept as %s", path, size - start, backup)
    return backup


def cli_hint(spec: str) -> str:
    """How Optuna's own CLI reads this storage."""
    if is_url(spec):
        return f"--storage {redact(spec)}"
    return f"--storage {spec} --storage-class JournalFileBackend"
