"""What exactly ran: the reproducibility record of a job (``env.json``, a summary in result.json).

- the command line, and the command that reruns this one job;
- the project's git commit, whether the tree was dirty, and a hash of the uncommitted diff
  (the diff itself is saved beside it as ``git.diff``);
- python, torch, CUDA and cuDNN, and hexsweep versions; host, device name, seeds;
- the installed packages (``importlib.metadata``, the same list ``pip freeze`` prints), saved
  once per sweep folder as ``packages.txt``, with its hash in every job, so that a report can
  say when the jobs of one sweep ran on different code or packages.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hexsweep.atomic import atomic_write_json, atomic_write_text
from hexsweep.secrets import redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE, DIFF_FILE, PACKAGES_FILE = "env.json", "git.diff", "packages.txt"
GIT_TIMEOUT_S = 10


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def command_line() -> list[str]:
    """The command as it was typed: ``python -m pkg.mod args`` (Python turns the module name into
    its file path in sys.argv[0]), or ``python script.py args``."""
    main = sys.modules.get("__main__")
    spec = getattr(getattr(main, "__spec__", None), "name", None)
    args = [redact(a) or "" for a in sys.argv]  # a storage URL's password never reaches env.json
    if spec and not spec.startswith("__"):
        return [sys.executable, "-m", spec.removesuffix(".__main__"), *args[1:]]
    return [sys.executable, *args]


def git_state() -> tuple[dict[str, Any], str]:
    """(commit, dirty flag, diff hash; or nulls outside a git checkout), and the diff text."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff_sha256": None}, ""
    diff = _git("diff", "HEAD", "--", ".") or ""
    untracked = _git("ls-files", "--others", "--exclude-standard") or ""
    dirty = bool(diff.strip() or untracked.strip())
    text = diff + ("".join(f"# untracked: {f}\n" for f in untracked.splitlines()) if untracked.strip() else "")
    digest = hashlib.sha256(text.encode()).hexdigest() if dirty else None
    return {"commit": commit.strip(), "dirty": dirty, "diff_sha256": digest}, text


_packages: list[str] | None = None  # filled once in the job server (sweep/warm.py): jobs inherit it


def packages() -> list[str]:
    """``name==version`` of every installed distribution, sorted (what ``pip freeze`` lists)."""
    global _packages
    if _packages is None:
        _packages = _scan_packages()
    return list(_packages)


def _scan_packages() -> list[str]:
    seen = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            seen[name.lower()] = f"{name}=={dist.version}"
    return [seen[k] for k in sorted(seen)]


def versions() -> dict[str, Any]:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        hexsweep_version = importlib.metadata.version("hexsweep")
    except importlib.metadata.PackageNotFoundError:
        hexsweep_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": cudnn, "hexsweep": hexsweep_version}


def record(job_dir: Path, overrides: list[str], seeds: dict[str, Any], device: str,
           device_name: str | None) -> dict[str, Any]:
    """Write ``env.json`` (and ``git.diff`` when the tree is dirty, ``packages.txt`` once per
    sweep folder) into the job folder; returns the summary that goes into result.json."""
    git, diff = git_state()
    if git["dirty"]:
        atomic_write_text(job_dir / DIFF_FILE, diff)
    listed = packages()
    text = "\n".join(listed) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    shared = job_dir.parent / PACKAGES_FILE  # one per sweep folder (a single run: its runs/ day folder)
    try:
        if not shared.exists():
            atomic_write_text(shared, text)
        elif hashlib.sha256(shared.read_bytes()).hexdigest() != digest:
            atomic_write_text(job_dir / PACKAGES_FILE, text)  # this job ran with other packages: its own list
    except OSError:
        atomic_write_text(job_dir / PACKAGES_FILE, text)
    env = {
        "command": command_line(),
        "job_command": "python -m hexsweep.train " + " ".join(shlex.quote(redact(o) or "") for o in overrides),
        "git": git,
        "versions": versions(),
        "packages_sha256": digest,
        "packages_count": len(listed),
        "host": socket.gethostname(),
        "device": device,
        "device_name": device_name,
        "seeds": seeds,
    }
    atomic_write_json(job_dir / ENV_FILE, env)
    return {"commit": git["commit"], "dirty": git["dirty"], "diff_sha256": git["diff_sha256"],
            "packages_sha256": digest, "torch": env["versions"]["torch"], "host": env["host"]}


def package_list(job_dir: Path) -> list[str]:
    """The packages a job ran with: its own list if it differed from its sweep's, else the sweep's."""
    for path in (job_dir / PACKAGES_FILE, job_dir.parent / PACKAGES_FILE):
        try:
            return path.read_text().split()
        except OSError:
            continue
    return []
