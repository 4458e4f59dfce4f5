"""The job folder: the contract between a training job and everything after it.

Every job (a single run or one job of a sweep) owns one Hydra output folder and writes
only there:

    .hydra/          Hydra's config.yaml, overrides.yaml, hydra.yaml
    result.json      written at start with status "running" (pid, host), replaced at the
                     end with the final status and all results; always written atomically
    metrics.jsonl    one JSON object per epoch (appended; a torn last line is ignored)
    error.txt        full traceback when the job failed
    best.pt last.pt  checkpoints (see hexsweep/trainer.py)

Readers (aggregation, Optuna, reports) go through ``read_result`` here, which also turns a
"running" result whose process is gone into "crashed".
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from hexsweep.atomic import atomic_write_json, atomic_write_text

RESULT_VERSION = 1
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
ERROR_FILE = "error.txt"
STATUSES = ("running", "completed", "failed", "oom", "pruned", "interrupted", "crashed")
FINISHED_OK = ("completed", "pruned")


BOOKKEEPING_KEYS = ("resume",)  # overrides that do not change what a job computes


def job_key(overrides: list[str]) -> list[str]:
    """The overrides that identify a job: sorted, without bookkeeping keys such as resume."""
    return sorted(o for o in overrides if o.partition("=")[0].lstrip("+~") not in BOOKKEEPING_KEYS)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class JobFolder:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def result_path(self) -> Path:
        return self.path / RESULT_FILE

    def start(self, info: dict[str, Any]) -> dict[str, Any]:
        """Mark the job running; a killed job is later recognised by its dead pid."""
        record = {
            "format_version": RESULT_VERSION,
            "status": "running",
            "pid": os.getpid(),
            "pid_started": psutil.Process().create_time(),
            "host": socket.gethostname(),
            "started_at": now_iso(),
            **info,
        }
        (self.path / METRICS_FILE).unlink(missing_ok=True)
        (self.path / ERROR_FILE).unlink(missing_ok=True)
        atomic_write_json(self.result_path, record)
        return record

    def update(self, record: dict[str, Any]) -> None:
        """Rewrite the running record (e.g. once the job holds its slot)."""
        atomic_write_json(self.result_path, record)

    def finish(self, record: dict[str, Any]) -> None:
        record["finished_at"] = now_iso()
        atomic_write_json(self.result_path, record)

    def write_error(self, exc: BaseException) -> str:
        text = "".join(traceback.format_exception(exc))
        atomic_write_text(self.path / ERROR_FILE, text)
        return text


def read_result(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job's result, or None if it has none; a 'running' job whose process died is 'crashed'."""
    path = Path(job_dir) / RESULT_FILE
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("status") == "running" and not _alive(record):
        record["status"] = "crashed"
        record.setdefault("error", {"type": "Crashed", "message": "the job's process died"})
    return record


def _alive(record: dict[str, Any]) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another machine's job: we cannot tell, so trust its status
    pid = record.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return False
    try:
        proc = psutil.Process(pid)
        same = abs(proc.create_time() - record.get("pid_started", proc.create_time())) < 1
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
