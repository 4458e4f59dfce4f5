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
"running" result whose process is gone into "crashed", and a malformed file into "corrupt".
This module owns the status vocabulary: every other module names statuses through the
constants below. The job itself writes its result (``JobFolder``); the sweep driver writes
it only for a job that could not (``record_death``: killed, stalled, timed out, interrupted
while it could not answer).
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
RUNNING, COMPLETED, PRUNED = "running", "completed", "pruned"
FAILED, OOM, CRASHED = "failed", "oom", "crashed"
INTERRUPTED, STALLED, CORRUPT = "interrupted", "stalled", "corrupt"
STATUSES = (RUNNING, COMPLETED, FAILED, OOM, PRUNED, INTERRUPTED, CRASHED, STALLED, CORRUPT)
FINISHED_OK = (COMPLETED, PRUNED)
# how a job that could not write its own result ended (the sweep driver records it)
DEATH_STATUS = {"Crashed": CRASHED, "Timeout": FAILED, "Stalled": STALLED, "Interrupted": INTERRUPTED}


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

    def start(self, info: dict[str, Any], keep_metrics: bool = False) -> dict[str, Any]:
        """Mark the job running; a killed job is later recognised by its dead pid. A fresh start
        clears the previous run's metrics and error; a resumed one (``keep_metrics``) keeps its
        metrics, which the trainer rewrites up to the epoch it resumes from."""
        record = {
            "format_version": RESULT_VERSION,
            "status": "running",
            "pid": os.getpid(),
            "pid_started": psutil.Process().create_time(),
            "host": socket.gethostname(),
            "started_at": now_iso(),
            **info,
        }
        if not keep_metrics:
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
    """The job's result, or None if it has none; a 'running' job whose process died is 'crashed';
    a file that is not a JSON object (torn, non-UTF-8, ``[]``) is 'corrupt', with the reason."""
    path = Path(job_dir) / RESULT_FILE
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return _corrupt(f"{RESULT_FILE} is unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if not isinstance(record, dict):
        return _corrupt(f"{RESULT_FILE} holds a {type(record).__name__}, not an object")
    if record.get("status") not in STATUSES:
        return _corrupt(f"{RESULT_FILE} has no known status ({str(record.get('status'))[:40]!r})")
    if record.get("status") == RUNNING and not _alive(record):
        record["status"] = CRASHED
        record.setdefault("error", {"type": "Crashed", "message": "the job's process died"})
    return record


def _corrupt(reason: str) -> dict[str, Any]:
    return {"status": CORRUPT, "error": {"type": "Corrupt", "message": reason}}


def sibling_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The results of every job folder of a sweep (memory admission learns from them)."""
    out = []
    for entry in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}")):
        record = read_result(entry.parent)
        if record is not None:
            out.append(record)
    return out


def completed_result(job_dir: str | os.PathLike, overrides: list[str]) -> dict[str, Any] | None:
    """For resume: the job's earlier result if it finished with the same overrides."""
    record = read_result(job_dir)
    if record and record.get("status") in FINISHED_OK and \
            job_key(record.get("overrides") or []) == job_key(overrides):
        return record
    return None


def record_death(job_dir: str | os.PathLike, how: str, kind: str, job: dict[str, Any],
                 force: bool = False) -> dict[str, Any]:
    """Write the result a job could not write itself; ``kind`` is a key of DEATH_STATUS.

    ``job`` identifies it (experiment, overrides, job name and number). Unless ``force``, a
    result the job did write (completed, failed, ...) is kept as it is."""
    record = read_result(job_dir) or {}
    if not force and record.get("status") not in (None, RUNNING, CRASHED, CORRUPT):
        return record
    if record.get("status") == CORRUPT:
        record = {}
    record.update({
        "status": DEATH_STATUS[kind],
        "error": {"type": kind, "message": f"the job's process {how}"},
        "experiment": record.get("experiment", job.get("experiment")),
        "overrides": job["overrides"],
        "job": record.get("job", job.get("job")),
    })
    folder = JobFolder(job_dir)
    atomic_write_text(folder.path / ERROR_FILE, f"{kind}: the job's process {how}\n")
    folder.finish(record)
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
