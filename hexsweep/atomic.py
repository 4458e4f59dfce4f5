"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from glob import escape as glob_escape
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through ``write(fileobj)`` into a temp file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that ``atomic_write(path)`` calls killed mid-way (kill -9, power loss)
    left beside ``path``; returns them. Only for a caller that knows no other process writes
    ``path`` now (a job's own checkpoints): a live writer's temp file looks the same."""
    path = Path(path)
    removed = []
    try:
        stale = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return []
    for tmp in stale:
        try:
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # another process cleaned it first, or it is not ours to remove: leave it
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line in a single write() call, so concurrent readers see whole lines."""
    line = json.dumps(obj, default=_json_default) + "\n"
    with open(path, "a") as f:
        f.write(line)


def write_jsonl(path: str | os.PathLike, rows: list[Any]) -> None:
    """Replace a JSONL file whole, atomically (a resumed job's metrics up to where it resumes)."""
    atomic_write_text(path, "".join(json.dumps(row, default=_json_default) + "\n" for row in rows))


def read_jsonl(path: str | os.PathLike, key: str | None = None) -> list[dict]:
    """Read a JSONL file of objects, skipping what a killed writer or a stray hand left: a torn
    last line, bytes that are not UTF-8, a line that is not an object, or (with ``key``) an
    object without that key."""
    rows = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(row, dict) and (key is None or key in row):
                    rows.append(row)
    except (FileNotFoundError, IsADirectoryError):
        return []
    return rows


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
