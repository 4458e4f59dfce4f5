"""Run real sweeps as a user would: ``python -m hexsweep.train -m ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BASE = ["debug=tiny", "trainer.progress=off", "strength.games=2", "hydra.launcher.progress=off"]


def sweep_cmd(outputs: Path, data: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "hexsweep.train", "-m", *BASE, f"paths.outputs={outputs}",
            f"paths.data={data}", *overrides]


def run_sweep(outputs: Path, data: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(outputs, data, *overrides), capture_output=True, text=True,
                          timeout=timeout)


def sweep_dirs(outputs: Path) -> list[Path]:
    return sorted(p for p in (outputs / "multirun").glob("*/*") if p.is_dir())


def read_result(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(predicate, timeout: float = 120, poll: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError("condition not reached")


def running_with_slot(outputs: Path, job: str) -> dict | None:
    """The result of job ``job`` once it holds its slot and trains."""
    dirs = sweep_dirs(outputs)
    if not dirs:
        return None
    r = read_result(dirs[-1] / job)
    return r if r and r.get("status") == "running" and r.get("slot") else None
