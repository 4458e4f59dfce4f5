"""Run real sweeps as a user would: ``python -m hexsweep.train -m ...`` in a subprocess."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

# 3 training steps an epoch, not the tiny split's 14: a sweep test checks what the machinery does
# with its jobs (statuses, reports, resumes, epochs reported and pruned), which a whole epoch does
# not change; a test that needs whole epochs (a window of training, a disk to fill) says null.
# Plots before the last line (``wait``), as the tests that look at them expect; the default
# (``background``, after it) has tests of its own (test_report_plots.py).
BASE = ["debug=tiny", "trainer.progress=off", "strength.games=2", "hydra.launcher.progress=off",
        "trainer.max_steps_per_epoch=3", "hydra.callbacks.sweep_report.plots=wait"]


def sweep_cmd(outputs: Path, data: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "hexsweep.train", "-m", *BASE, f"paths.outputs={outputs}",
            f"paths.data={data}", *overrides]


def run_sweep(outputs: Path, data: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = sweep_cmd(outputs, data, *overrides)
    with launched(cmd) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_tree(proc: subprocess.Popen, *also: psutil.Process) -> None:
    """SIGKILL ``proc``, every process it started and the processes ``also``: a failed test leaves
    none running. SIGKILL, since a job the test SIGSTOPped ignores the SIGTERM its parent's death
    sends. The tree is read before anything dies (a dead job server's children leave it).
    psutil.Process objects, taken while their process ran, never signal a reused pid."""
    victims: list[psutil.Process] = []
    for p in (proc.watched, *also) if hasattr(proc, "watched") else also:
        with contextlib.suppress(psutil.Error):
            if p.is_running():
                victims += [p, *p.children(recursive=True)]
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(victims, timeout=30)
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
        proc.communicate(timeout=30)  # reap it, close its pipes


def popen(cmd: list[str], **kwargs: object) -> subprocess.Popen:
    """``subprocess.Popen(cmd)``, with text pipes unless told otherwise, ready for ``kill_tree``. A
    test that stops a job, or orphans it, adds it with ``proc.also.append(psutil.Process(pid))``."""
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kwargs}
    proc = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]
    proc.watched = psutil.Process(proc.pid)  # type: ignore[attr-defined]
    proc.also = []  # type: ignore[attr-defined]
    return proc


@contextlib.contextmanager
def launched(cmd: list[str], **kwargs: object) -> Iterator[subprocess.Popen]:
    """``popen(cmd)``; when the block ends, however it ends, the command and everything it started
    are killed (``kill_tree``). The ``spawn`` fixture (conftest.py) does the same for a whole test."""
    proc = popen(cmd, **kwargs)
    try:
        yield proc
    finally:
        kill_tree(proc, *proc.also)  # type: ignore[attr-defined]


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


def run_one_failing_sweep(outputs: Path, data: Path, launcher: str, *extra: str):
    """A 2-job sweep through another Hydra launcher where job 0 raises; checks the shared
    outcome (exit 1, the one-line summary, the table) and returns (sweep folder, table)."""
    import pandas as pd

    cmd = [c for c in sweep_cmd(outputs, data, f"hydra/launcher={launcher}", "fault.raise_at_epoch=1,99", *extra)
           if c != "hydra.launcher.progress=off"]  # that key belongs to the hexsweep launcher only
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "hexsweep: 1 of 2 jobs failed: 0 (fault.raise_at_epoch=1): failed: InjectedFault" in out.stderr
    sweep = sweep_dirs(outputs)[0]
    df = pd.read_csv(sweep / "results.csv").set_index("job_num")
    assert df.loc[0, "status"] == "failed" and df.loc[1, "status"] == "completed"
    assert "InjectedFault" in (sweep / "0" / "error.txt").read_text()
    return sweep, df


def dropout_space(cfg, trial) -> None:
    """A custom_search_space hook for the tests: dropout depends on the sampled learning rate."""
    high = 0.3 if trial.params.get("optim.lr", 1.0) > 1e-3 else 0.1
    trial.suggest_float("model.dropout", 0.0, high)


def console_script(name: str) -> str:
    """A console script installed beside this interpreter (works with the venv not activated)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed beside {sys.executable}: pip install -e '.[dev]'")
    return str(path)
