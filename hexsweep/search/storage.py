"""Where studies live: the embedded default (an Optuna journal file) or any RDB URL.

Default: ``JournalStorage(JournalFileBackend("<outputs>/optuna/studies.journal"))``. Measured
here (shared/design.md): 8 concurrent writer processes, 320 trials: SQLite 30.9 s, the
journal file 6.5 s, both without lock errors at that load; SQLite also must never sit on
NFS. Optuna's CLI and dashboard read the journal with ``--storage-class JournalFileBackend``.

A storage spec is an RDB URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``) or a
path to a ``.journal`` file. Passwords in URLs are never printed: ``redact`` masks them.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from hexsweep.errors import ConfigError

DEFAULT_JOURNAL = "optuna/studies.journal"
STORAGE_ENV = "HEXSWEEP_OPTUNA_STORAGE"  # how the sweeper hands the storage to its jobs
URL_RE = re.compile(r"^[a-z][a-z0-9+]*://")


def default_storage(outputs: str | os.PathLike) -> str:
    return str(Path(outputs).resolve() / DEFAULT_JOURNAL)


def is_url(spec: str) -> bool:
    return bool(URL_RE.match(spec))


def redact(spec: str | None) -> str | None:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    if spec is None:
        return None
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", spec)


def open_storage(spec: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 retry_failed: int = 0) -> BaseStorage:
    if is_url(spec):
        kwargs = {}
        if heartbeat_interval and not spec.startswith("sqlite"):
            kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}
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
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def cli_hint(spec: str) -> str:
    """How Optuna's own CLI reads this storage."""
    if is_url(spec):
        return f"--storage {redact(spec)}"
    return f"--storage {spec} --storage-class JournalFileBackend"
