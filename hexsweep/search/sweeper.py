"""The hexsweep Optuna sweeper: asynchronous trials, pruning, failures as data, resume.

Design. Hydra's launcher API is batch-based (``launch(batch)`` returns when the whole batch
is done), which makes every slot wait for the slowest trial of its batch. With the
hexsweep launcher this sweeper bypasses that API: it hands the sweep driver
(sweep/driver.py) a feed of trials, and asks Optuna for the next trial the moment any job ends
(finished, failed or pruned), keeping ``n_jobs`` trials running. With any other launcher
it falls back to batches of ``n_jobs`` single trials through ``launch``.

Every trial's outcome is read from its job folder (``result.json``), the contract shared
with aggregation: completed -> COMPLETE with the value(s); pruned -> PRUNED; failed, oom,
crashed, interrupted, a NaN/inf value -> FAIL with the reason in ``user_attrs``. Nothing a
job does can crash the sweep; ``max_failure_rate`` (over the whole study) ends it with a
clear message. Trials left RUNNING by a driver that died are failed on the next run
(heartbeat on RDB storages; on the journal file, by the dead pid in their job folder).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import sys
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.trial import TrialState

from hexsweep.cli import first_line
from hexsweep.errors import ConfigError, HexsweepError
from hexsweep.jobfolder import INTERRUPTED, read_result
from hexsweep.search.space import grid_points, parse_params, to_override
from hexsweep.search.storage import STORAGE_ENV, cli_hint, default_storage, is_url, open_storage, redact
from hexsweep.sweep.apps import app_for
from hexsweep.sweep.launcher import compose_job
from hexsweep.sweep.owner import driver_alive, own

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def job_dir_of(ret: JobReturn, fallback: Path) -> Path:
    """A job's folder from its JobReturn. Not ``working_dir``: with hydra.job.chdir=false Hydra
    puts the process's cwd there, which under Ray or Slurm is not the job folder."""
    out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    return Path(str(out)) if out else fallback


class TooManyFailures(HexsweepError):
    """max_failure_rate exceeded."""


def redact_storage(cfg: DictConfig) -> None:
    """Mask the storage password in the sweep's config, which Hydra copies into every job's
    ``.hydra/`` files and multirun.yaml: the value itself and its command-line override.
    An interpolation (``${oc.env:HEXSWEEP_STORAGE}``) is kept as it is: it holds no secret."""
    node = cfg.hydra.sweeper._get_node("storage")
    raw = node._value() if node is not None else None
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        if isinstance(raw, str) and redact(raw) != raw:
            cfg.hydra.sweeper.storage = redact(raw)
        cfg.hydra.overrides.hydra = [redact(o) for o in cfg.hydra.overrides.hydra]


class SearchStopped(HexsweepError):
    """The search ended without what it was for: too many failed trials, or none completed."""

    exit_code = 1


def nothing_completed(study: optuna.Study, first_trial: int, continued: set[int] = frozenset()) -> str | None:
    """One line when no trial of this search completed: counts by reason and the first reason.
    ``continued``: earlier trials this search continued (paused ones)."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.number >= first_trial or t.number in continued]
    if not mine or any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in mine):
        return None
    failed = [t for t in mine if t.state == TrialState.FAIL]
    counts = Counter(t.user_attrs.get("fail_status") or "failed" for t in failed)
    first = failed[0] if failed else mine[0]
    by = ", ".join(f"{n} {k}" for k, n in counts.most_common())
    return (f"no trial of this search completed ({len(mine)} trials: {by}); first: trial {first.number}: "
            f"{first.user_attrs.get('fail_reason') or first.state.name}")


def write_optimization_results(study: optuna.Study, sweep_dir: Path) -> None:
    """``optimization_results.yaml`` in the sweep folder, as the official plugin writes it."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return
    if len(study.directions) == 1:
        best = study.best_trial
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
    else:
        results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials]}
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def warn_if_shared_journal(storage_spec: str, launcher: Any) -> None:
    """A journal file on NFS, or under Slurm (whose nodes share files over the network), can be
    corrupted by concurrent appends (optuna issue 5138): say so once, and what to use."""
    if is_url(storage_spec):
        return
    slurm = "submitit" in type(launcher).__module__ or "slurm" in type(launcher).__name__.lower()
    fs = file_system_type(Path(storage_spec).parent)
    if slurm or (fs or "").startswith("nfs"):
        where = f"on {fs}" if fs and fs.startswith("nfs") else "under a Slurm launcher"
        log.warning("the Optuna journal %s is %s: concurrent appends from several machines can corrupt it "
                    "(optuna issue 5138); use an RDB URL, e.g. hydra.sweeper.storage=postgresql://user@host/db",
                    storage_spec, where)


def file_system_type(path: Path) -> str | None:
    """The type of the file system holding ``path`` (Linux /proc/mounts), or None."""
    import psutil

    try:
        target = path.resolve()
        best = None
        for part in psutil.disk_partitions(all=True):
            mount = Path(part.mountpoint)
            if (target == mount or mount in target.parents) and (best is None or len(str(mount)) > len(best[0])):
                best = (str(mount), part.fstype)
        return best[1] if best else None
    except (OSError, RuntimeError):
        return None


def driver_record(sweep_dir: Path) -> dict[str, Any]:
    """Who runs a trial: the orphan check of a later driver asks whether it still lives."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "sweep_dir": str(sweep_dir)}


def directions_of(direction: Any) -> list[str]:
    dirs = [direction] if isinstance(direction, str) else list(direction)
    for d in dirs:
        if d not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={d!r} is invalid: allowed minimize or maximize (or a list)")
    return dirs


class OptunaSearch:
    def __init__(self, params: dict[str, Any]) -> None:
        self.p = params
        self.fixed_keys: list[str] = []
        self.app = app_for(None)  # the task's app, once setup() knows the task
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.app = app_for(task_function)

    # ---- set-up -----------------------------------------------------------------------
    def _space(self, arguments: list[str]) -> tuple[dict, list[str]]:
        """``params`` of the config plus command-line sweeps (``x='interval(0,1)'``, ``b=1,2``),
        as in the official plugin. A plain command-line value fixes its key: it leaves the
        search space (``self.fixed_keys``, recorded in the study's user_attrs); a key both
        fixed and swept on the command line is refused."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = dict(self.p.get("params") or {})
        fixed_args: list[str] = []
        swept_here: set[str] = set()
        parser = OverridesParser.create()
        for arg in arguments:
            override = parser.parse_override(arg)
            key = override.get_key_element().lstrip("+~")
            if override.is_sweep_override() and not override.is_hydra_override():
                params[key] = arg.partition("=")[2]
                swept_here.add(key)
            else:
                fixed_args.append(arg)
        fixed_keys = {parser.parse_override(a).get_key_element().lstrip("+~") for a in fixed_args}
        if both := sorted(fixed_keys & swept_here):
            raise ConfigError(f"{both[0]} is both fixed and searched on the command line: give it one value, "
                              "or a search expression, not both")
        self.fixed_keys = sorted(fixed_keys & set(params))
        for key in self.fixed_keys:  # the command line wins over the search space of the config
            del params[key]
        space, fixed = parse_params(params)
        return space, fixed + fixed_args

    def _sampler(self, space: dict) -> optuna.samplers.BaseSampler:
        cfg = OmegaConf.to_container(OmegaConf.create(self.p.get("sampler") or {}), resolve=True)
        if not cfg:
            return optuna.samplers.TPESampler()
        if str(cfg.get("_target_", "")).endswith("GridSampler") and "search_space" not in cfg:
            cfg["search_space"] = {key: grid_points(key, d) for key, d in space.items()}
        return instantiate(cfg)

    def _study(self, storage_spec: str, name: str, sampler, directions: list[str], resume: bool):
        storage = open_storage(storage_spec, self.p.get("heartbeat_interval"), self.p.get("grace_period"),
                               int(self.p.get("retry_failed") or 0))
        try:
            existing = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            existing = None
        if existing is not None and existing.trials and not resume:
            raise ConfigError(
                f"study {name!r} already has {len(existing.trials)} trials in {redact(storage_spec)}: "
                "add resume=true to continue it, or set hydra.sweeper.study_name to start another")
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                                    load_if_exists=True)
        if existing is not None and [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"study {name!r} has directions {[d.name.lower() for d in study.directions]}, "
                              f"but hydra.sweeper.direction is {directions}")
        return storage, study

    @staticmethod
    def _driver_dead(driver: dict[str, Any], sweep_dir: Path) -> bool:
        """Whether a trial's driver is dead (False when it cannot be told). Called once this
        process holds ``sweep_dir``: any other driver of that folder has ended."""
        if driver.get("sweep_dir") == str(sweep_dir) and driver.get("host") == socket.gethostname():
            return driver.get("pid") != os.getpid()
        return driver_alive(driver.get("sweep_dir"), driver.get("host")) is False

    def _paused(self, study: optuna.Study, sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
        """The trials an interrupted run of this sweep folder left paused (``_pause``), whose
        driver is gone: a resume of the same folder continues them, in their own trials."""
        paused = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            driver, job_dir = t.user_attrs.get("driver") or {}, t.user_attrs.get("job_dir")
            if t.user_attrs.get("paused") and driver.get("sweep_dir") == str(sweep_dir) and job_dir \
                    and (Path(job_dir) / "last.pt").exists() and self._driver_dead(driver, sweep_dir):
                paused.append(t)
        return paused

    def _pause(self, trial: optuna.Trial, outcome: Any) -> bool:
        """At a Ctrl-C of the sweep, a job that stopped with its training state saved keeps its
        trial RUNNING, its reported epochs in place, instead of failing it: resuming this sweep
        folder continues it from last.pt in the same trial (a later driver of another folder
        fails it as orphaned)."""
        if not (self.app.records_failures and outcome.status == INTERRUPTED and (outcome.job_dir / "last.pt").exists()):
            return False
        trial.set_user_attr("paused", True)
        log.info("trial %d paused: resume this sweep folder (resume=true) to continue it", trial.number)
        return True

    def _fail_orphans(self, study: optuna.Study, storage: Any, sweep_dir: Path,
                      adopted: list[optuna.trial.FrozenTrial] = ()) -> None:
        """Trials whose driver died while they ran become FAIL (and are re-queued with retry_failed).

        Orphaned means the trial's driver is dead, not that its job ended: the driver of a
        trial on this host holds its sweep folder's lock (sweep/owner.py) for as long as it
        lives. A trial of a driver on another host is left to the RDB heartbeat. ``adopted``:
        paused trials this driver continues (not orphans)."""
        keep = {t.number for t in adopted}
        if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
            for t in adopted:  # alive again: the stale-trial sweep below must not fail them
                storage.record_heartbeat(t._trial_id)
            optuna.storages.fail_stale_trials(study)
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in keep:
                continue
            if not self._driver_dead(t.user_attrs.get("driver") or {}, sweep_dir):
                continue  # alive, or unknown (another host): not ours to fail
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            job_dir = t.user_attrs.get("job_dir")
            record = read_result(job_dir) if job_dir else None
            reason = "orphaned: its sweep driver died" + (f" (job {record['status']})" if record else "")
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished meanwhile by a driver that was alive after all
            log.warning("trial %d was left running by a dead driver: marked FAIL", t.number)
            if int(self.p.get("retry_failed") or 0) > 0:
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})

    # ---- one trial ---------------------------------------------------------------------
    def _overrides(self, trial: optuna.Trial, space: dict, fixed: list[str], directions: list[str]) -> list[str]:
        values = {key: trial.params[key] for key in space}  # sampled by study.ask(space)
        custom = self.p.get("custom_search_space")
        if custom:
            module, _, fn = str(custom).rpartition(".")
            getattr(importlib.import_module(module), fn)(self.config, trial)
            values.update({k: v for k, v in trial.params.items() if k not in values})
        overrides = [*fixed, *(to_override(k, v) for k, v in values.items())]
        keys = {o.partition("=")[0].lstrip("+~") for o in overrides}
        # only for apps that have these keys: a plain app gets its sampled values and nothing else
        seed = OmegaConf.select(self.config, "seed", default=None)
        if isinstance(seed, int) and "seed" not in keys:  # a new seed per trial: resumed trials differ
            overrides.append(f"seed={seed + trial.number}")
        has_direction = OmegaConf.select(self.config, "objective.direction", default=None) is not None
        if has_direction and len(directions) == 1 and "objective.direction" not in keys:
            overrides.append(f"objective.direction={directions[0]}")
        return overrides + self._link(trial)

    def _link(self, trial: optuna.Trial) -> list[str]:
        """The ``optuna.*`` overrides through which a job reports its epochs to its trial (only
        for apps that have those keys)."""
        if OmegaConf.select(self.config, "optuna.study_name", default="absent") == "absent":
            return []
        pruner = self.p.get("pruner") or {}
        link = [f"optuna.study_name={self.study_name}", f"optuna.trial_number={trial.number}",
                f"optuna.pruner={pruner.get('name', 'none')}"]
        for key in ("n_startup_trials", "n_warmup_steps", "percentile", "min_resource", "reduction_factor"):
            if key in pruner:
                link.append(f"optuna.{key}={pruner[key]}")
        return link

    def _oom_blocked(self, study: optuna.Study, params: dict) -> int | None:
        """The number of an earlier trial that ran out of memory with these params (or a smaller
        batch size and the same other params), or None."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get("fail_status") != "oom" or not t.params:
                continue
            others = {k: v for k, v in t.params.items() if k != "batch_size"}
            bigger = "batch_size" not in t.params or params.get("batch_size", 0) >= t.params["batch_size"]
            if bigger and all(params.get(k) == v for k, v in others.items()):
                return t.number
        return None

    def _values(self, record: dict) -> list[float]:
        metrics = self.p.get("metrics")
        if metrics:
            best = record.get("best") or {}
            return [float(best.get(m, math.nan)) for m in metrics]
        return [float((record.get("objective") or {}).get("value", math.nan))]

    def _finish(self, study: optuna.Study, trial: optuna.Trial, job_dir: Path, ret: JobReturn | None = None) -> str:
        """Tell Optuna how the trial's job ended; harmless if another driver already finished it."""
        try:
            if not self.app.records_failures:  # any Hydra app: the task's return value is the objective
                return self._tell_returned(study, trial, ret, len(study.directions))
            return self._tell_outcome(study, trial, job_dir)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was already finished by another driver; its job's result is kept in %s",
                        trial.number, job_dir)
            return "already finished"

    def _tell_returned(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn | None, n_dirs: int) -> str:
        """A plain app's trial: its return value, a float (or a sequence, one per direction), as
        the official plugin reads it; a job that raised or died is a failed trial."""
        reason = None
        if ret is None or ret.status != JobStatus.COMPLETED:
            error = ret._return_value if ret is not None else None
            reason = f"failed: {type(error).__name__}: {first_line(str(error))}" if error is not None else \
                "failed: no result"
        else:
            value = ret.return_value
            try:
                values = [float(value)] if n_dirs == 1 else [float(v) for v in value]
            except (TypeError, ValueError):
                reason = (f"Return value must be float-castable. Got '{value}'." if n_dirs == 1 else
                          f"Return value must be a list or tuple of float-castable values. Got '{value}'.")
            else:
                if len(values) != n_dirs:
                    reason = ("The number of the values and the number of the objectives are mismatched. "
                              f"Expect {n_dirs}, but actually {len(values)}.")
                elif not all(math.isfinite(v) for v in values):
                    reason = f"non-finite objective {values}"
        if reason is None:
            _tell(study, trial, values if n_dirs > 1 else values[0])
            return "completed"
        log.warning("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr("fail_status", "failed")
        trial.set_user_attr("fail_reason", reason)
        _tell(study, trial, state=TrialState.FAIL)
        return "failed"

    def _tell_outcome(self, study: optuna.Study, trial: optuna.Trial, job_dir: Path) -> str:
        record = read_result(job_dir) or {"status": "crashed", "error": {"type": "Crashed", "message": "no result"}}
        status = record.get("status")
        error = record.get("error") or {}
        reason = f"{status}: {error.get('type')}: {error.get('message')}" if error else status
        trial.set_user_attr("fail_status", None)
        if status == "completed":
            values = self._values(record)
            if all(math.isfinite(v) for v in values):
                _tell(study, trial, values if len(values) > 1 else values[0])
                return "completed"
            reason, status = f"non-finite objective {values}", "nan"
        if status == "pruned":
            trial.set_user_attr("pruned_at_epoch", record.get("pruned_at_epoch"))
            _tell(study, trial, state=TrialState.PRUNED)
            return "pruned"
        trial.set_user_attr("fail_status", status)
        trial.set_user_attr("fail_reason", reason)
        if status == "oom":
            trial.set_user_attr("oom_batch_size", record.get("oom_batch_size") or record.get("batch_size"))
        _tell(study, trial, state=TrialState.FAIL)
        return "failed"

    # ---- the sweep ---------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        from hexsweep.sweep.driver import SweepDriver, SweepInterrupted

        cfg = self.config  # a HexsweepError here is one line from the plugin (exit_on_error)
        directions = directions_of(self.p.get("direction", "minimize"))
        space, fixed = self._space(arguments)
        metrics = self.p.get("metrics") or []
        if self.app.records_failures and len(directions) > 1 and len(metrics) != len(directions):
            raise ConfigError(f"hydra.sweeper.direction has {len(directions)} objectives: set hydra.sweeper."
                              "metrics to as many metric names (e.g. [val_policy_acc,val_value_loss])")
        outputs = OmegaConf.select(cfg, "paths.outputs", default=None) or "outputs"
        storage_spec = self.p.get("storage") or default_storage(outputs)
        self.study_name = self.p.get("study_name") or "hexsweep"
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).resolve()
        self._precheck(sweep_dir, fixed)
        # hexsweep.train asks for resume=true to add to a study; a plain app continues it, as the official plugin
        storage, study = self._study(storage_spec, self.study_name, self._sampler(space), directions,
                                     bool(cfg.get("resume")) or not self.app.records_failures)
        warn_if_shared_journal(storage_spec, self.launcher)
        if self.fixed_keys:
            log.info("fixed on the command line, not searched: %s", ", ".join(self.fixed_keys))
        study.set_user_attr("fixed_on_command_line", [a for a in fixed if a.partition("=")[0].lstrip("+~")
                                                      in self.fixed_keys])
        n_trials = int(self.p.get("n_trials", 20))
        if isinstance(study.sampler, optuna.samplers.GridSampler):  # as the official plugin: at most the grid
            n_trials = min(n_trials, math.prod(len(grid_points(k, d)) for k, d in space.items()))
        remaining = n_trials - len(study.trials) if cfg.get("resume") else n_trials
        os.environ[STORAGE_ENV] = storage_spec  # how jobs reach the storage: never through their config
        redact_storage(cfg)
        own(sweep_dir, wait=self.app.waits_for_owner(cfg))  # one driver per sweep folder
        # after own(): a driver of this folder that resume=wait waited for has ended (and paused its trials)
        async_jobs = getattr(self.launcher, "async_jobs", False)
        paused = self._paused(study, sweep_dir) if cfg.get("resume") and async_jobs else []
        self._fail_orphans(study, storage, sweep_dir, paused)
        continued = {t.number for t in paused}
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        n_jobs = int(self.p.get("n_jobs") or self.launcher_n_jobs() or self.app.default_n_jobs(cfg, max(remaining, 1)))
        log.info("optuna study %r in %s: %d trials to run (%d in the study), %d at once; %s",
                 self.study_name, redact(storage_spec), max(remaining, 0), len(study.trials), n_jobs,
                 "asynchronous" if getattr(self.launcher, "async_jobs", False) else "in batches")
        if paused:
            log.info("continuing %d paused trial(s) from their last.pt: %s", len(paused),
                     ", ".join(str(t.number) for t in paused))
        max_failure_rate = float(self.p.get("max_failure_rate", 0.5))
        too_many: str | None = None
        interrupted = False
        first_trial = len(study.trials)  # this search's trials are numbered from here (others may interleave)
        if getattr(self.launcher, "async_jobs", False):
            driver = SweepDriver(self.launcher, n_jobs, max(remaining, 0) + len(paused), sweep_dir)
            running: dict[int, tuple[optuna.Trial, Path]] = {}
            started = 0

            def more() -> bool:
                # resume=true joins a study that other drivers may be filling too:
                # n_trials is then the study's total, checked before every new trial
                shared_full = bool(cfg.get("resume")) and len(study.trials) >= n_trials
                return started < remaining and too_many is None and not grid_exhausted(study) and not shared_full

            def feed() -> DictConfig | None:
                nonlocal started
                nonlocal too_many
                while paused:  # first the trials an interrupted run of this folder paused
                    job = self._restart(study, paused.pop(0), sweep_dir)
                    if job is not None:
                        job_cfg, trial, job_dir = job
                        running[trial.number] = (trial, job_dir)
                        return job_cfg
                while more():
                    started += 1
                    job = self._start(study, space, fixed, directions, sweep_dir)
                    if job is not None:
                        job_cfg, trial, job_dir = job
                        running[trial.number] = (trial, job_dir)
                        return job_cfg
                    too_many = self._failure_check(study, max_failure_rate)  # a trial that could not start
                return None

            def done(outcome: Any) -> None:
                nonlocal too_many
                trial, job_dir = running.pop(outcome.num)
                if driver.stopping and self._pause(trial, outcome):
                    return
                self._finish(study, trial, job_dir, outcome.ret)
                too_many = self._failure_check(study, max_failure_rate)

            try:
                with _Heartbeat(storage, running, study, paused):
                    driver.run(feed, done)
            except SweepInterrupted:
                interrupted = True
        else:
            too_many = self._batched(study, space, fixed, directions, remaining, n_jobs, max_failure_rate)
        self._report(study, sweep_dir, storage_spec)
        write_optimization_results(study, sweep_dir)
        if interrupted:  # the driver has reported the sweep
            held = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    if t.user_attrs.get("paused")]
            if held:
                print(f"[hexsweep] {len(held)} trial(s) paused with their training state "
                      f"({', '.join(map(str, held))}): the command above continues them in their trials",
                      file=sys.stderr)
            print(f"[hexsweep] or continue the study in a new folder: resume=true (same study {self.study_name!r})"
                  + ("; the paused trials then fail as orphaned" if held else ""), file=sys.stderr)
            raise SweepInterrupted("interrupted")
        if too_many:  # Hydra's post-sweep callback will not run: report here
            self.app.report(sweep_dir, interrupted=True)
            raise SearchStopped(too_many)
        if (why := nothing_completed(study, first_trial, continued)) is not None:
            raise SearchStopped(why)

    def program(self) -> str:
        """How the user started this app, for the command that reproduces a trial."""
        main = sys.modules.get("__main__")
        spec = getattr(getattr(main, "__spec__", None), "name", None)
        if self.app.records_failures or spec == "hexsweep.train":
            return "python -m hexsweep.train"
        return f"python -m {spec}" if spec else f"python {sys.argv[0]}"

    def launcher_n_jobs(self) -> int | None:
        """Trials at once as the launcher sees it: its n_jobs, or what its cluster holds (Ray)."""
        if hasattr(self.launcher, "concurrency"):
            return int(self.launcher.concurrency())
        n = getattr(self.launcher, "params", {}).get("n_jobs") if hasattr(self.launcher, "params") else None
        return n if isinstance(n, int) and n > 0 else None

    def _start(self, study, space, fixed, directions, sweep_dir):
        trial = study.ask(space)
        trial.set_user_attr("driver", driver_record(sweep_dir))  # first: a later driver's orphan check needs it
        overrides = self._overrides(trial, space, fixed, directions)
        blocker = self._oom_blocked(study, trial.params) if space else None
        if blocker is not None:
            trial.set_user_attr("fail_status", "skipped_oom")
            trial.set_user_attr("fail_reason", f"skipped: trial {blocker} ran out of memory with these params "
                                               "(or a smaller batch size)")
            _tell(study, trial, state=TrialState.FAIL)
            return None
        try:
            cfg = compose_job(self.hydra_context, self.config, sweep_dir, overrides, trial.number)
            self.app.validate(cfg)
        except Exception as e:  # a sampled value the config rejects: that trial fails, the sweep goes on
            trial.set_user_attr("fail_status", "invalid")
            trial.set_user_attr("fail_reason", str(e).splitlines()[0])
            _tell(study, trial, state=TrialState.FAIL)
            return None
        job_dir = sweep_dir / str(cfg.hydra.sweep.subdir)
        trial.set_user_attr("job_dir", str(job_dir))
        trial.set_user_attr("overrides", [o for o in overrides if not o.startswith("optuna.")])
        trial.set_user_attr("host", os.uname().nodename)
        trial.set_user_attr("program", self.program())
        return cfg, trial, job_dir

    def _precheck(self, sweep_dir: Path, fixed: list[str]) -> None:
        """The values every trial shares (fixed on the command line, the pruner settings sent to
        jobs), checked once before the study is touched: a bad one is one line naming it,
        instead of a search whose every trial fails."""
        try:
            self.app.validate(compose_job(self.hydra_context, self.config, sweep_dir,
                                          [*fixed, *self._link(SimpleNamespace(number=0))], 0))
        except HexsweepError as e:  # named as the user wrote it: the job's optuna.* keys come from hydra.sweeper
            message = first_line(str(e))
            key = message.split("=", 1)[0].split(" ", 1)[0]
            if key.startswith("optuna."):
                setting = {"optuna.pruner": "hydra.sweeper.pruner.name",
                           "optuna.study_name": "hydra.sweeper.study_name"}.get(
                    key, key.replace("optuna.", "hydra.sweeper.pruner.", 1))
                message = setting + message[len(key):]
            raise ConfigError(message) from None

    def _restart(self, study, frozen, sweep_dir):
        """A paused trial's job again: the same trial (its params, its reported epochs), the
        overrides it started with (whatever the search space or the command line is now) plus
        resume=true, in its job folder, so the job continues from its last.pt."""
        trial = optuna.trial.Trial(study, frozen._trial_id)
        started_with = [o for o in frozen.user_attrs.get("overrides") or [] if o.partition("=")[0] != "resume"]
        try:
            cfg = compose_job(self.hydra_context, self.config, sweep_dir,
                              [*started_with, "resume=true", *self._link(trial)], trial.number)
            trial.set_user_attr("driver", driver_record(sweep_dir))
            trial.set_user_attr("paused", False)
        except optuna.exceptions.UpdateFinishedTrialError:
            return None  # finished meanwhile (failed as stale by an RDB heartbeat): nothing to continue
        except Exception as e:  # the config no longer takes it: that trial fails, the sweep goes on
            log.warning("paused trial %d cannot continue: %s", trial.number, first_line(str(e)))
            trial.set_user_attr("fail_status", "invalid")
            trial.set_user_attr("fail_reason", f"paused, then could not continue: {first_line(str(e))}")
            _tell(study, trial, state=TrialState.FAIL)
            return None
        return cfg, trial, sweep_dir / str(cfg.hydra.sweep.subdir)

    def _batched(self, study, space, fixed, directions, remaining, n_jobs, max_failure_rate) -> str | None:
        """Any other Hydra launcher: batches of n_jobs single trials (each batch waits for its slowest)."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        done = 0
        while done < remaining and not grid_exhausted(study):
            trials = [study.ask(space) for _ in range(min(n_jobs, remaining - done))]
            batch = [self._overrides(t, space, fixed, directions) for t in trials]
            for t, o in zip(trials, batch, strict=True):
                t.set_user_attr("overrides", [x for x in o if not x.startswith("optuna.")])
                t.set_user_attr("driver", driver_record(sweep_dir))
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for t, r in zip(trials, returns, strict=True):
                job_dir = job_dir_of(r, sweep_dir / str(t.number))
                t.set_user_attr("job_dir", str(job_dir))
                self._finish(study, t, job_dir, r)
            done += len(trials)
            if (msg := self._failure_check(study, max_failure_rate)) is not None:
                return msg
        return None

    @staticmethod
    def _failure_check(study: optuna.Study, max_rate: float) -> str | None:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        failed = [t for t in finished if t.state == TrialState.FAIL]
        if len(finished) >= 2 and len(failed) / len(finished) > max_rate:
            reasons = "; ".join(f"{t.number}: {t.user_attrs.get('fail_reason')}" for t in failed[-3:])
            return (f"{len(failed)} of {len(finished)} trials failed (> max_failure_rate={max_rate}); "
                    f"sweep stopped. Last: {reasons}")
        return None

    def _report(self, study: optuna.Study, sweep_dir: Path, storage_spec: str) -> None:
        from hexsweep.report.study import best_summary, study_plots

        try:
            study_plots(study, sweep_dir)
        except Exception as e:  # plots are a bonus; a plotting error must not hide the results
            log.warning("optuna plots failed: %s", e)
        text = best_summary(study)
        (sweep_dir / "study.md").write_text(
            f"# Optuna study `{study.study_name}`\n\nStorage: `{redact(storage_spec)}` "
            f"(Optuna CLI: `optuna trials --study-name {study.study_name} {cli_hint(storage_spec)}`)\n\n{text}\n")
        print(f"[hexsweep] study {study.study_name!r}: {text.splitlines()[0] if text else ''}", file=sys.stderr)


def _tell(study: optuna.Study, trial: optuna.Trial, values: Any = None, state: TrialState | None = None) -> None:
    """``study.tell`` outside ``study.optimize``: the grid sampler calls ``study.stop()`` when its
    grid is used up, which Optuna only allows inside optimize; the trial is told by then."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def grid_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


class _Heartbeat:
    """Records heartbeats of running trials on storages that support them (RDB)."""

    def __init__(self, storage: Any, running: dict, study: optuna.Study, waiting: list | None = None) -> None:
        self.storage, self.running, self.study = storage, running, study
        self.waiting = waiting if waiting is not None else []  # paused trials not restarted yet
        self.enabled = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 60
        while not self._stop.wait(max(0.5, interval / 2)):
            try:
                for trial, _ in list(self.running.values()):
                    self.storage.record_heartbeat(trial._trial_id)
                for frozen in list(self.waiting):
                    self.storage.record_heartbeat(frozen._trial_id)
                # trials of another driver that died stop beating: fail them (and re-queue
                # them if retry_failed is set) so that the study does not wait on them
                optuna.storages.fail_stale_trials(self.study)
            except Exception as e:  # a storage hiccup must not end the sweep
                log.warning("heartbeat failed: %s", e)
