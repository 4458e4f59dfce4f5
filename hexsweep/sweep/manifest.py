"""``sweep.json``: the sweep folder's manifest, written only by the sweep's driver.

It lists the planned jobs (number, overrides, folder), so that the report can show jobs that
never started, and records how each job ended (status, and the task's return value when it
is plain JSON), so that ``hydra.launcher.resume=true`` can skip a plain Hydra app's completed
jobs: such an app keeps no result of its own in its job folder. hexsweep.train's jobs keep
theirs in ``result.json`` (hexsweep/jobfolder.py), which stays the truth for them.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hexsweep.atomic import atomic_write_json
from hexsweep.jobfolder import job_key
from hexsweep.secrets import redact

MANIFEST = "sweep.json"


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((sweep_dir / MANIFEST).read_bytes().decode("utf-8"))
        if isinstance(manifest, dict) and isinstance(manifest.get("jobs"), dict):
            return manifest
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return {"jobs": {}}


def write_manifest(sweep_dir: Path, configs: list[DictConfig], n_jobs: int) -> None:
    """The planned jobs, added to what an earlier run of this sweep folder planned."""
    manifest = read_manifest(sweep_dir)
    for cfg in configs:
        entry = manifest["jobs"].setdefault(str(cfg.hydra.job.num), {})
        overrides = list(cfg.hydra.overrides.task)
        if entry.get("overrides") is not None and job_key(entry["overrides"]) != job_key(overrides):
            entry.clear()  # another job under this number now: its old outcome is not this one's
        entry.update({"overrides": overrides, "dir": str(cfg.hydra.sweep.subdir),
                      "experiment": cfg.get("experiment_name")})
    manifest.update({"n_jobs": n_jobs, "command": [redact(a) for a in sys.argv], "total": len(manifest["jobs"])})
    atomic_write_json(sweep_dir / MANIFEST, manifest)


def _plain(value: Any) -> Any:
    """The value if JSON keeps it as it is (numbers, strings, lists of them), else a marker."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple) and all(isinstance(v, bool | int | float | str) for v in value):
        return list(value)
    return {"unrecorded": type(value).__name__}


def record_outcome(sweep_dir: Path, num: int, overrides: list[str], status: str, value: Any) -> None:
    manifest = read_manifest(sweep_dir)
    entry = manifest["jobs"].setdefault(str(num), {"overrides": overrides})
    entry.update({"status": status, "value": _plain(value) if status == "completed" else None})
    with contextlib.suppress(OSError):  # a full disk: the outcome is still the driver's, the sweep goes on
        atomic_write_json(sweep_dir / MANIFEST, manifest)


def recorded_completion(sweep_dir: Path, num: int, overrides: list[str]) -> dict[str, Any] | None:
    """For resume: this job's recorded completion, if it completed with the same overrides and its
    return value could be recorded (else it runs again)."""
    entry = read_manifest(sweep_dir)["jobs"].get(str(num)) or {}
    if entry.get("status") != "completed" or job_key(entry.get("overrides") or []) != job_key(overrides):
        return None
    if isinstance(entry.get("value"), dict):
        return None
    return {"status": "completed", "value": entry.get("value")}
