"""Shared command-line plumbing: compose the train config outside @hydra.main, one-line errors."""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hexsweep.errors import HexsweepError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


_exit_collection_skipped = False


def skip_exit_collection() -> None:
    """Let this process exit without CPython's last garbage collections over what is still alive.

    With torch, pandas and matplotlib loaded they took 3-5 s of a sweep's or a report's exit on a
    busy 2-core machine (0.7-1.2 s with this), after the last line was printed. ``gc.freeze`` at
    exit moves every object to the permanent generation, which those collections skip; the
    process's memory goes back to the OS as it would anyway, and atexit handlers (logging's
    flush, MLflow's end of run) still run: this one only freezes the heap."""
    global _exit_collection_skipped
    if not _exit_collection_skipped:
        _exit_collection_skipped = True
        atexit.register(gc.freeze)


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit: how every user error leaves a hexsweep command."""
    print(f"hexsweep: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def compose(overrides: list[str]) -> Any:
    """The train config with ``overrides`` applied, validated, without creating a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hexsweep.config import register_schema, validate

    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise HexsweepError(with_cause(e)) from None
    validate(cfg)
    return cfg


def compose_from_argv(prog: str) -> Any:
    """For plain (non-Hydra-app) commands that take the train config's overrides."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(f"usage: python -m {prog} [key=value ...]   (the overrides of hexsweep.train)")
        raise SystemExit(0)
    return run_cli(lambda: compose(args))


def run_cli(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except HexsweepError as e:
        fail(str(e))


def with_cause(e: BaseException) -> str:
    """Hydra's error as one line, with the first line of its cause where the cause says why
    (Hydra's "Error merging override optim.lr=abc" leaves OmegaConf's reason, "Value 'abc' of
    type 'str' could not be converted to Float", to its cause)."""
    message = first_line(str(e))
    cause = e.__cause__
    why = str(cause).strip().splitlines()[0].strip() if cause is not None and str(cause).strip() else ""
    return f"{message}: {why}" if why and why not in message else message


def first_line(message: str) -> str:
    """Hydra's multi-line errors as one line; a missing group option lists the allowed ones."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return message
    if len(lines) > 1 and lines[1].startswith("Available options in"):
        options = []
        for ln in lines[2:]:
            if ln.startswith("Config search path"):
                break
            options.append(ln)
        return f"{lines[0]}: allowed {', '.join(options)}"
    return " ".join(lines[:3])
