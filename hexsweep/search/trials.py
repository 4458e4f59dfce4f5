"""Optuna's side of a search, one trial at a time: ask, the trial's overrides, its job's config,
and telling Optuna how the job ended. The one path that prepares a trial, whatever the launcher
(asynchronous through the hexsweep launcher, or in batches through any other).

What a job's values are, which keys a trial's job gets besides its sampled values and what
blocks a configuration after an out-of-memory error are the app's (sweep/apps.py): nothing
here knows hexsweep.train.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from omegaconf import DictConfig
from optuna.trial import TrialState

from hexsweep.cli import first_line
from hexsweep.search.space import to_override
from hexsweep.sweep.apps import JobApp

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A trial whose job may start: its config (composed and validated) and its folder."""

    trial: optuna.Trial
    cfg: DictConfig | None
    overrides: list[str]
    job_dir: Path


def driver_record(sweep_dir: Path) -> dict[str, Any]:
    """Who runs a trial: the orphan check of a later driver asks whether it still lives."""
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "sweep_dir": str(sweep_dir)}


def tell(study: optuna.Study, trial: optuna.Trial, values: Any = None, state: TrialState | None = None) -> None:
    """``study.tell`` outside ``study.optimize``: the grid sampler calls ``study.stop()`` when its
    grid is used up, which Optuna only allows inside optimize; the trial is told by then."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def fail(study: optuna.Study, trial: optuna.Trial, status: str, reason: str) -> None:
    trial.set_user_attr("fail_status", status)
    trial.set_user_attr("fail_reason", reason)
    tell(study, trial, state=TrialState.FAIL)


class Trials:
    """Ask, prepare and tell the trials of one search.

    ``compose(overrides, num)`` composes and validates a job's config (the launcher's, or the
    sweep's own Hydra context under a batch launcher); a HexsweepError there fails the trial."""

    def __init__(self, study: optuna.Study, app: JobApp, config: DictConfig, params: dict[str, Any],
                 study_name: str, space: dict, fixed: list[str], directions: list[str], sweep_dir: Path,
                 compose: Callable[[list[str], int], DictConfig]) -> None:
        self.study, self.app, self.config, self.p = study, app, config, params
        self.study_name, self.space, self.fixed, self.directions = study_name, space, fixed, directions
        self.sweep_dir, self.compose = sweep_dir, compose
        self.metrics = list(params.get("metrics") or [])

    # ---- a trial's overrides -------------------------------------------------------------
    def overrides(self, trial: optuna.Trial) -> list[str]:
        values = {key: trial.params[key] for key in self.space}  # sampled by study.ask(space)
        custom = self.p.get("custom_search_space")
        if custom:
            module, _, fn = str(custom).rpartition(".")
            getattr(importlib.import_module(module), fn)(self.config, trial)
            values.update({k: v for k, v in trial.params.items() if k not in values})
        overrides = [*self.fixed, *(to_override(k, v) for k, v in values.items())]
        taken = {o.partition("=")[0].lstrip("+~") for o in overrides}
        return overrides + self.app.trial_overrides(self.config, trial.number, self.directions, taken) \
            + self.link(trial.number)

    def link(self, number: int) -> list[str]:
        return self.app.trial_link(self.config, self.study_name, number, dict(self.p.get("pruner") or {}))

    # ---- prepare ---------------------------------------------------------------------------
    def ask(self, compose: bool = True) -> Prepared | None:
        """A new trial ready to run, or None when it could not start (told FAIL with the reason):
        its params ran out of memory before, or the config rejects a sampled value.
        ``compose=False``: a batch launcher composes the job itself."""
        trial = self.study.ask(self.space)
        trial.set_user_attr("driver", driver_record(self.sweep_dir))  # first: a later driver's orphan check
        overrides = self.overrides(trial)
        if (blocker := self.oom_blocked(trial.params)) is not None:
            fail(self.study, trial, "skipped_oom", f"skipped: trial {blocker} ran out of memory with these params "
                                                   "(or a smaller batch size)")
            return None
        try:
            cfg = self.compose(overrides, trial.number) if compose else None
        except Exception as e:  # a sampled value the config rejects: that trial fails, the sweep goes on
            fail(self.study, trial, "invalid", first_line(str(e)))
            return None
        job_dir = self.sweep_dir / (str(cfg.hydra.sweep.subdir) if cfg is not None else str(trial.number))
        trial.set_user_attr("job_dir", str(job_dir))
        trial.set_user_attr("overrides", [o for o in overrides if not o.startswith("optuna.")])
        trial.set_user_attr("host", os.uname().nodename)
        trial.set_user_attr("program", self.app.program())
        return Prepared(trial, cfg, overrides, job_dir)

    def restart(self, frozen: optuna.trial.FrozenTrial) -> Prepared | None:
        """A paused trial's job again: the same trial (its params, its reported epochs), the
        overrides it started with (whatever the search space or the command line is now) plus
        the app's resume overrides, in its job folder, so the job continues from its saved state."""
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        resume_keys = {o.partition("=")[0] for o in self.app.resume_overrides()}
        started_with = [o for o in frozen.user_attrs.get("overrides") or [] if o.partition("=")[0] not in resume_keys]
        overrides = [*started_with, *self.app.resume_overrides(), *self.link(trial.number)]
        try:
            cfg = self.compose(overrides, trial.number)
            trial.set_user_attr("driver", driver_record(self.sweep_dir))
            trial.set_user_attr("paused", False)
        except optuna.exceptions.UpdateFinishedTrialError:
            return None  # finished meanwhile (failed as stale by an RDB heartbeat): nothing to continue
        except Exception as e:  # the config no longer takes it: that trial fails, the sweep goes on
            log.warning("paused trial %d cannot continue: %s", trial.number, first_line(str(e)))
            fail(self.study, trial, "invalid", f"paused, then could not continue: {first_line(str(e))}")
            return None
        return Prepared(trial, cfg, overrides, self.sweep_dir / str(cfg.hydra.sweep.subdir))

    def oom_blocked(self, params: dict) -> int | None:
        """The number of an earlier trial that ran out of memory where these params would too, or None."""
        if not self.space:
            return None
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get("fail_status") == "oom" and t.params and self.app.blocks_after_oom(t.params, params):
                return t.number
        return None

    # ---- tell ------------------------------------------------------------------------------
    def finish(self, trial: optuna.Trial, job_dir: Path, ret: JobReturn | None = None) -> str:
        """Tell Optuna how the trial's job ended (the app's verdict); harmless if another driver
        already finished it. Returns the trial's state word."""
        verdict = self.app.verdict(ret, job_dir, len(self.study.directions), self.metrics)
        try:
            trial.set_user_attr("fail_status", None)
            for key, value in verdict.extra.items():
                trial.set_user_attr(key, value)
            if verdict.state == "completed":
                values = verdict.values or []
                tell(self.study, trial, values if len(values) > 1 else values[0])
            elif verdict.state == "pruned":
                tell(self.study, trial, state=TrialState.PRUNED)
            else:
                log.warning("trial %d failed: %s", trial.number, verdict.reason)
                fail(self.study, trial, verdict.status, verdict.reason or verdict.status)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was already finished by another driver; its job's result is kept in %s",
                        trial.number, job_dir)
            return "already finished"
        return verdict.state

    def failure_check(self, max_rate: float) -> str | None:
        """One line when more than ``max_rate`` of the study's finished trials failed."""
        finished = self.study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        failed = [t for t in finished if t.state == TrialState.FAIL]
        if len(finished) >= 2 and len(failed) / len(finished) > max_rate:
            reasons = "; ".join(f"{t.number}: {t.user_attrs.get('fail_reason')}" for t in failed[-3:])
            return (f"{len(failed)} of {len(finished)} trials failed (> max_failure_rate={max_rate}); "
                    f"sweep stopped. Last: {reasons}")
        return None
