"""The job folder: the contract between a training job and everything after it.

Every job (a single run or one job of a sweep) owns one Hydra output folder and writes
only there:

    .hydra/          Hydra's config.yaml, overrides.yaml, hydra.yaml
    result.json      written at start with status "running" (pid, host), replaced at the
                     end with the final status and all results; always written atomically
    metrics.jsonl    one JSON object per epoch (appended; a torn last line is ignored)
    error.txt        full traceback when the job failed
    best.pt last.pt  checkpoints (see hexsweep/trainer.py)

Readers (aggregation, Optuna, reports, admission, trackers) go through ``read_result`` here,
which returns a typed ``JobResult`` (the only place that knows result.json's keys), turns a
"running" result whose process is gone into "crashed", and a malformed file into "corrupt".
This module owns the status vocabulary: every other module names statuses through the
constants below. The job itself writes its result (``JobFolder``); the sweep driver writes
it only for a job that could not (``record_death``: killed, stalled, timed out, interrupted
while it could not answer).
"""

from __future__ import annotations

import json
import math
import os
import socket
import traceback
from dataclasses import asdict, dataclass, field, fields
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


@dataclass
class JobError:
    """Why a job did not complete: the exception's type (or the driver's kind of death) and its first line."""

    type: str
    message: str


@dataclass
class Objective:
    """The metric a job optimises (``objective.*`` of its config) and its value at the best epoch."""

    metric: str | None
    direction: str | None  # minimize, maximize
    value: float


@dataclass
class JobResult:
    """result.json, typed: the one record of how a job went. Written at the job's start
    (``running``) and rewritten as it goes and at its end; every reader goes through
    ``read_result``. Keys this version does not know are kept in ``extra`` and written back.
    ``to_dict`` leaves out what was never set (None), as the job writes it."""

    status: str
    format_version: int = RESULT_VERSION
    # the process that runs (or ran) the job: a "running" job whose process is gone is crashed
    pid: int | None = None
    pid_started: float | None = None
    host: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # which job: Hydra's job name/num/override_dirname, its task overrides (the key of a sweep row)
    experiment: str | None = None
    batch_size: int | None = None
    job: dict[str, Any] | None = None
    overrides: list[str] | None = None
    multirun: bool | None = None
    oom_batch_size: int | None = None  # the batch size that ran out of memory, when retried at half
    retried: bool | None = None
    resumed_from_epoch: int | None = None
    resumed_from_step: int | None = None
    # how it ran: the resolved config, what memory admission compares, slot and device, provenance
    config: dict[str, Any] | None = None
    signature: dict[str, Any] | None = None
    device: str | None = None
    num_threads: int | None = None
    slot: str | None = None
    slot_acquired_at: float | None = None
    waited_s: float | None = None
    env: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    optuna: dict[str, Any] | None = None  # the trial this job reports to
    tracking: dict[str, Any] | None = None  # e.g. {"mlflow": {"run_id": ...}}
    # what it gave: metrics of the best and the last epoch (the trainer's keys), strength, peaks
    objective: Objective | None = None
    best_epoch: int | None = None
    best: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None
    restored_best: bool | None = None
    pruned_at_epoch: int | None = None
    strength: dict[str, Any] | None = None
    wall_time_s: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mem_mb: float | None = None
    peak_gpu_used_mb: float | None = None
    error: JobError | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in FINISHED_OK

    @property
    def value(self) -> float:
        """The objective's value; NaN when the job has none."""
        return float(self.objective.value) if self.objective is not None else math.nan

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            if key not in _FIELDS:
                raise AttributeError(f"result.json has no key {key!r}")  # a typo, not a new key
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name != "error"):
                continue
            out[f.name] = asdict(value) if isinstance(value, JobError | Objective) else value
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        """Raises ``ResultFormatError`` naming the key when a value has the wrong type."""
        version = data.get("format_version", RESULT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version > RESULT_VERSION:
            raise ResultFormatError(f"format_version {version!r} is not one this hexsweep reads "
                                    f"(at most {RESULT_VERSION}): written by a newer hexsweep?")
        if data.get("status") not in STATUSES:
            raise ResultFormatError(f"no known status ({str(data.get('status'))[:40]!r})")
        values: dict[str, Any] = {"extra": {}}
        for key, value in data.items():
            if key not in _FIELDS or key == "extra":
                values["extra"][key] = value
            elif value is None or key in ("status", "format_version"):
                values[key] = value
            elif key == "error":
                values[key] = _typed(key, value, JobError)
            elif key == "objective":
                values[key] = _typed(key, value, Objective)
            else:
                values[key] = _checked(key, value)
        return cls(**values)


_FIELDS = {f.name for f in fields(JobResult)}


class ResultFormatError(ValueError):
    """result.json holds a value of the wrong type (a damaged or foreign file)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _typed(key: str, value: Any, kind: type) -> Any:
    names = ["value"] if kind is Objective else [f.name for f in fields(kind)]  # what must be there
    if not isinstance(value, dict) or not set(names) <= set(value):
        raise ResultFormatError(f"{key} is not an object with {', '.join(names)}")
    if kind is Objective:
        number = value["value"]
        if number is not None and not _is_number(number):
            raise ResultFormatError(f"objective.value is a {type(number).__name__}, not a number")
        metric, direction = value.get("metric"), value.get("direction")
        return Objective(None if metric is None else str(metric), None if direction is None else str(direction),
                         math.nan if number is None else float(number))
    return kind(**{n: str(value[n]) for n in names})


# what each plain field's annotation admits, and how a message names it
_CHECKS = {
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "float": (_is_number, "a number"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "a boolean"),
    "list": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
}
# each field's kind, read from JobResult's own annotations ("int | None" -> int), so the
# dataclass is the one list of result.json's keys and their types
_KIND = {f.name: str(f.type).split("|")[0].split("[")[0].strip() for f in fields(JobResult)}


def _checked(key: str, value: Any) -> Any:
    accepts, wanted = _CHECKS[_KIND[key]]
    if not accepts(value):
        raise ResultFormatError(f"{key} is a {type(value).__name__}, not {wanted}")
    return float(value) if _KIND[key] == "float" else value


class JobFolder:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def result_path(self) -> Path:
        return self.path / RESULT_FILE

    def start(self, result: JobResult, keep_metrics: bool = False) -> JobResult:
        """Mark the job running; a killed job is later recognised by its dead pid. A fresh start
        clears the previous run's metrics and error; a resumed one (``keep_metrics``) keeps its
        metrics, which the trainer rewrites up to the epoch it resumes from."""
        result.update(status=RUNNING, pid=os.getpid(), pid_started=psutil.Process().create_time(),
                      host=socket.gethostname(), started_at=now_iso(), finished_at=None)
        if not keep_metrics:
            (self.path / METRICS_FILE).unlink(missing_ok=True)
        (self.path / ERROR_FILE).unlink(missing_ok=True)
        self.update(result)
        return result

    def update(self, result: JobResult) -> None:
        """Rewrite the record (e.g. once the job holds its slot)."""
        atomic_write_json(self.result_path, result.to_dict())

    def finish(self, result: JobResult) -> None:
        result.finished_at = now_iso()
        self.update(result)

    def write_error(self, exc: BaseException) -> str:
        text = "".join(traceback.format_exception(exc))
        atomic_write_text(self.path / ERROR_FILE, text)
        return text


def read_result(job_dir: str | os.PathLike) -> JobResult | None:
    """The job's result, or None if it has none; a 'running' job whose process died is 'crashed';
    a file that is not a result (torn, non-UTF-8, ``[]``, a value of the wrong type, a newer
    format) is 'corrupt', with the reason."""
    path = Path(job_dir) / RESULT_FILE
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return _corrupt(f"{RESULT_FILE} is unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if not isinstance(data, dict):
        return _corrupt(f"{RESULT_FILE} holds a {type(data).__name__}, not an object")
    try:
        result = JobResult.from_dict(data)
    except ResultFormatError as e:
        return _corrupt(f"{RESULT_FILE} is not a job result: {e}")
    if result.status == RUNNING and not _alive(result):
        result.status = CRASHED
        result.error = result.error or JobError("Crashed", "the job's process died")
    return result


def _corrupt(reason: str) -> JobResult:
    return JobResult(CORRUPT, error=JobError("Corrupt", reason))


def sibling_results(sweep_dir: str | os.PathLike) -> list[JobResult]:
    """The results of every job folder of a sweep (memory admission learns from them)."""
    out = []
    for entry in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}")):
        result = read_result(entry.parent)
        if result is not None:
            out.append(result)
    return out


def completed_result(job_dir: str | os.PathLike, overrides: list[str]) -> JobResult | None:
    """For resume: the job's earlier result if it finished with the same overrides."""
    result = read_result(job_dir)
    if result and result.ok and job_key(result.overrides or []) == job_key(overrides):
        return result
    return None


def record_death(job_dir: str | os.PathLike, how: str, kind: str, job: dict[str, Any],
                 force: bool = False) -> JobResult:
    """Write the result a job could not write itself; ``kind`` is a key of DEATH_STATUS.

    ``job`` identifies it (experiment, overrides, job name and number). Unless ``force``, a
    result the job did write (completed, failed, ...) is kept as it is."""
    result = read_result(job_dir)
    if result is not None and not force and result.status not in (RUNNING, CRASHED, CORRUPT):
        return result
    if result is None or result.status == CORRUPT:
        result = JobResult(RUNNING)
    result.update(status=DEATH_STATUS[kind], error=JobError(kind, f"the job's process {how}"),
                  experiment=result.experiment or job.get("experiment"), overrides=list(job["overrides"]),
                  job=result.job or job.get("job"))
    folder = JobFolder(job_dir)
    atomic_write_text(folder.path / ERROR_FILE, f"{kind}: the job's process {how}\n")
    folder.finish(result)
    return result


def _alive(result: JobResult) -> bool:
    if result.host != socket.gethostname():
        return True  # another machine's job: we cannot tell, so trust its status
    pid = result.pid
    if pid is None or not psutil.pid_exists(pid):
        return False
    try:
        proc = psutil.Process(pid)
        started = result.pid_started if result.pid_started is not None else proc.create_time()
        same = abs(proc.create_time() - started) < 1
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
