"""Aggregation: job folders -> one table (pandas), one row per job.

Reads only ``result.json`` (and ``metrics.jsonl`` for curves) of each job folder, plus the
sweep's ``sweep.json`` to list planned jobs that never started. Folders without a
result (half-written, never started) become rows with status ``missing``/``not_started``
rather than errors. The row key is the job's override set, not its experiment name, so
the same experiment with other overrides stays distinguishable.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from hexsweep.atomic import read_jsonl
from hexsweep.jobfolder import CORRUPT, RESULT_FILE, job_key, read_result

METRIC_KEYS = ("val_objective", "val_loss", "val_policy_loss", "val_value_loss", "val_policy_acc",
               "val_value_acc", "train_loss", "train_policy_acc", "samples_per_s",
               # policy detail and the value head by game stage (trainer.evaluate, hexsweep/calibration.py)
               "val_policy_top3_acc", "val_policy_top5_acc", "val_policy_entropy", "val_value_ece",
               "val_value_loss_early", "val_value_loss_middle", "val_value_loss_late",
               "val_value_acc_early", "val_value_acc_middle", "val_value_acc_late", "strength")
OK = ("completed", "pruned")

log = logging.getLogger(__name__)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Subfolders that are job folders (hold a result or Hydra's .hydra), numerically sorted.

    Works on strings and os.scandir: at 10,000 jobs pathlib's overhead is most of the time.
    """
    out = []
    with os.scandir(sweep_dir) as it:
        for entry in it:
            try:
                is_dir = entry.is_dir()
            except OSError as e:  # a symbolic link loop (ELOOP), a folder we may not enter
                log.warning("skipped %s: %s", entry.path, e.strerror or e)
                continue
            if is_dir and not entry.name.startswith("."):
                path = entry.path
                if os.path.exists(os.path.join(path, RESULT_FILE)) or os.path.isdir(os.path.join(path, ".hydra")):
                    out.append(path)
    out.sort(key=lambda p: (not os.path.basename(p).isdigit(),
                            int(os.path.basename(p)) if os.path.basename(p).isdigit() else 0, p))
    return [Path(p) for p in out]


def override_key(overrides: list[str]) -> str:
    key = job_key(overrides)
    return " ".join(key) if key else "(defaults)"


def _overrides_from_hydra(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    import yaml

    try:
        return list(yaml.safe_load(path.read_text()) or [])
    except yaml.YAMLError:
        return []


def job_row(job: Path, sweep: str) -> dict[str, Any]:
    r = read_result(job)
    row: dict[str, Any] = {"sweep": sweep, "job_dir": str(job),
                           "job_num": int(job.name) if job.name.isdigit() else None}
    if r is None or r.status == CORRUPT:
        overrides = _overrides_from_hydra(job)
        error = ("no result.json (never started, or killed before writing it)" if r is None
                 else f"Corrupt: {r.error.message if r.error else ''}")
        row.update(status="missing" if r is None else CORRUPT, overrides=override_key(overrides),
                   _overrides=overrides, error=error)
        return row
    overrides = r.overrides or []
    best, final, strength = r.best or {}, r.final or {}, r.strength or {}
    objective = r.objective
    row.update({
        "experiment": r.experiment,
        "overrides": override_key(overrides),
        "_overrides": overrides,
        "status": r.status,
        "objective_metric": objective.metric if objective else None,
        "objective_direction": objective.direction if objective else None,
        "objective": objective.value if objective else None,
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "batch_size": r.batch_size if r.batch_size is not None else (r.config or {}).get("batch_size"),
        "oom_batch_size": r.oom_batch_size,
        "retried": bool(r.retried),
        "wall_time_s": r.wall_time_s,
        "peak_rss_mb": r.peak_rss_mb,
        "peak_gpu_mem_mb": r.peak_gpu_mem_mb,
        "device": r.device,
        "slot": r.slot,
        "num_threads": r.num_threads,
        "host": r.host,
        "win_rate_vs_generator": strength.get("win_rate_vs_generator"),
        "win_rate_vs_random": strength.get("win_rate_vs_random"),
        "error": f"{r.error.type}: {r.error.message}" if r.error else None,
        "code": code_of(r.env),
        "packages": ((r.env or {}).get("packages_sha256") or "")[:12] or None,
    })
    for key in METRIC_KEYS:
        row[f"best_{key}"] = best.get(key)
        row[f"final_{key}"] = final.get(key)
    return row


def code_of(env: Any) -> str | None:
    """The code a job ran, as one word: the git commit, and the uncommitted diff's hash if dirty."""
    git = (env or {}).get("git") if isinstance(env, dict) else None
    if not git or not git.get("commit"):
        return None
    return git["commit"][:12] + (f"+{git['diff_sha256'][:8]}" if git.get("dirty") and git.get("diff_sha256") else "")


def provenance_warning(df: pd.DataFrame) -> str | None:
    """One line when the jobs of the table ran on different code or different packages."""
    parts = []
    for col, what in (("code", "code (git commit + uncommitted diff)"), ("packages", "installed packages")):
        if col in df and df[col].dropna().nunique() > 1:
            parts.append(f"{df[col].dropna().nunique()} versions of the {what}")
    if not parts:
        return None
    return ("these jobs ran on " + " and ".join(parts) + ": compare two with python -m hexsweep.analyze "
            "--diff <job A> <job B>")


def not_started_rows(sweep_dir: Path, seen: set[str], sweep: str) -> list[dict[str, Any]]:
    try:
        manifest = json.loads((sweep_dir / "sweep.json").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    jobs = manifest.get("jobs") if isinstance(manifest, dict) else None
    rows = []
    for num, job in (jobs if isinstance(jobs, dict) else {}).items():
        if not isinstance(job, dict) or not str(num).isdigit() or not isinstance(job.get("dir"), str):
            continue  # a hand-edited manifest: skip what cannot be a planned job
        overrides = [str(o) for o in job.get("overrides") or []]
        if job["dir"] not in seen:
            rows.append({"sweep": sweep, "job_dir": str(sweep_dir / job["dir"]), "job_num": int(num),
                         "experiment": job.get("experiment"), "overrides": override_key(overrides),
                         "_overrides": overrides, "status": "not_started"})
    return rows


def aggregate(sweep_dirs: list[Path]) -> pd.DataFrame:
    """One row per job of every sweep folder, with one ``ov.<key>`` column per override key."""
    rows: list[dict[str, Any]] = []
    for sweep_dir in sweep_dirs:
        sweep_dir = Path(sweep_dir)
        jobs = job_dirs(sweep_dir)
        rows.extend(job_row(job, str(sweep_dir)) for job in jobs)
        rows.extend(not_started_rows(sweep_dir, {j.name for j in jobs}, str(sweep_dir)))
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    ov_columns: dict[str, list[Any]] = {}
    for i, overrides in enumerate(df["_overrides"]):
        for item in job_key(overrides or []):
            key, _, value = item.partition("=")
            ov_columns.setdefault(f"ov.{key.lstrip('+~')}", [None] * len(df))[i] = value
    df = df.drop(columns=["_overrides"])
    for col, values in sorted(ov_columns.items()):
        df[col] = values
    if "host" not in df:  # no job recorded one (none started): unknown, not the analysing machine's
        df["host"] = None
    return df


def load_curves(rows: pd.DataFrame) -> dict[str, list[dict]]:
    """metrics.jsonl of each job of ``rows``, keyed by job folder, in their order. Which jobs
    (the best, by the objective's direction) is the caller's to choose: the report ranks once."""
    if rows.empty:
        return {}
    return {row.job_dir: read_jsonl(Path(row.job_dir) / "metrics.jsonl", key="epoch") for row in rows.itertuples()}


def load_best_rows(job_dirs: list[str]) -> dict[str, dict[str, Any]]:
    """The best epoch's metric row (``best`` of result.json, with the reliability curve) of each
    job folder, for the calibration figure; folders without one are left out."""
    rows = {}
    for job_dir in job_dirs:
        r = read_result(job_dir)
        if r and r.best is not None:
            rows[str(job_dir)] = r.best
    return rows
