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
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from hexsweep.cli import fail
from hexsweep.errors import ConfigError, HexsweepError
from hexsweep.jobfolder import read_result
from hexsweep.search.space import parse_params, to_override
from hexsweep.search.storage import STORAGE_ENV, cli_hint, default_storage, open_storage, redact
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
            grid = {}
            for key, d in space.items():
                if not isinstance(d, CategoricalDistribution):
                    raise ConfigError(f"the grid sampler needs choice() values: hydra.sweeper.params.{key} is {d}")
                grid[key] = list(d.choices)
            cfg["search_space"] = grid
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

    def _fail_orphans(self, study: optuna.Study, storage: Any) -> None:
        """Trials whose driver died while they ran become FAIL (and are re-queued with retry_failed).

        Orphaned means the trial's driver is dead, not that its job ended: the driver of a
        trial on this host holds its sweep folder's lock (sweep/owner.py) for as long as it
        lives. A trial of a driver on another host is left to the RDB heartbeat."""
        if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
            optuna.storages.fail_stale_trials(study)
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            driver = t.user_attrs.get("driver") or {}
            if driver_alive(driver.get("sweep_dir"), driver.get("host")) is not False:
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
        pruner = self.p.get("pruner") or {}
        overrides = [*fixed, *(to_override(k, v) for k, v in values.items())]
        keys = {o.partition("=")[0] for o in overrides}
        if "seed" not in keys:  # a new seed per trial: resumed trials are not copies of earlier ones
            overrides.append(f"seed={int(self.config.seed) + trial.number}")
        if len(directions) == 1 and "objective.direction" not in keys:
            overrides.append(f"objective.direction={directions[0]}")
        overrides += [f"optuna.study_name={self.study_name}", f"optuna.trial_number={trial.number}",
                      f"optuna.pruner={pruner.get('name', 'none')}"]
        for key in ("n_startup_trials", "n_warmup_steps", "percentile", "min_resource"):
            if key in pruner:
                overrides.append(f"optuna.{key}={pruner[key]}")
        return overrides

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

    def _finish(self, study: optuna.Study, trial: optuna.Trial, job_dir: Path) -> str:
        """Tell Optuna how the trial's job ended; harmless if another driver already finished it."""
        try:
            return self._tell_outcome(study, trial, job_dir)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was already finished by another driver; its job's result is kept in %s",
                        trial.number, job_dir)
            return "already finished"

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
        from hexsweep.sweep.callbacks import report_sweep
        from hexsweep.sweep.driver import SweepDriver, SweepInterrupted

        cfg = self.config
        try:
            directions = directions_of(self.p.get("direction", "minimize"))
            space, fixed = self._space(arguments)
            if len(directions) > 1 and len(self.p.get("metrics") or []) != len(directions):
                raise ConfigError(f"hydra.sweeper.direction has {len(directions)} objectives: set hydra.sweeper."
                                  "metrics to as many metric names (e.g. [val_policy_acc,val_value_loss])")
            storage_spec = self.p.get("storage") or default_storage(cfg.paths.outputs)
            self.study_name = self.p.get("study_name") or "hexsweep"
            storage, study = self._study(storage_spec, self.study_name, self._sampler(space), directions,
                                         bool(cfg.get("resume")))
        except HexsweepError as e:
            fail(str(e))
        self._fail_orphans(study, storage)
        if self.fixed_keys:
            log.info("fixed on the command line, not searched: %s", ", ".join(self.fixed_keys))
        study.set_user_attr("fixed_on_command_line", [a for a in fixed if a.partition("=")[0].lstrip("+~")
                                                      in self.fixed_keys])
        n_trials = int(self.p.get("n_trials", 20))
        remaining = n_trials - len(study.trials) if cfg.get("resume") else n_trials
        os.environ[STORAGE_ENV] = storage_spec  # how jobs reach the storage: never through their config
        redact_storage(cfg)
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).resolve()
        own(sweep_dir, wait=self.app.waits_for_owner(cfg))  # one driver per sweep folder
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        n_jobs = int(self.p.get("n_jobs") or self.launcher_n_jobs() or self.app.default_n_jobs(cfg, max(remaining, 1)))
        log.info("optuna study %r in %s: %d trials to run (%d in the study), %d at once; %s",
                 self.study_name, redact(storage_spec), max(remaining, 0), len(study.trials), n_jobs,
                 "asynchronous" if getattr(self.launcher, "async_jobs", False) else "in batches")
        max_failure_rate = float(self.p.get("max_failure_rate", 0.5))
        too_many: str | None = None
        interrupted = False
        if getattr(self.launcher, "async_jobs", False):
            driver = SweepDriver(self.launcher, n_jobs, max(remaining, 0), sweep_dir)
            running: dict[int, tuple[optuna.Trial, Path]] = {}
            started = 0

            def more() -> bool:
                # resume=true joins a study that other drivers may be filling too:
                # n_trials is then the study's total, checked before every new trial
                shared_full = bool(cfg.get("resume")) and len(study.trials) >= n_trials
                return started < remaining and too_many is None and not grid_exhausted(study) and not shared_full

            def feed() -> DictConfig | None:
                nonlocal started
                while more():
                    started += 1
                    job = self._start(study, space, fixed, directions, sweep_dir)
                    if job is not None:
                        job_cfg, trial, job_dir = job
                        running[trial.number] = (trial, job_dir)
                        return job_cfg
                return None

            def done(outcome: Any) -> None:
                nonlocal too_many
                trial, job_dir = running.pop(outcome.num)
                self._finish(study, trial, job_dir)
                too_many = self._failure_check(study, max_failure_rate)

            try:
                with _Heartbeat(storage, running, study):
                    driver.run(feed, done)
            except SweepInterrupted:
                interrupted = True
        else:
            too_many = self._batched(study, space, fixed, directions, remaining, n_jobs, max_failure_rate)
        self._report(study, sweep_dir, storage_spec)
        if interrupted:  # the driver has reported the sweep
            print(f"[hexsweep] or continue the study in a new folder: resume=true (same study {self.study_name!r})",
                  file=sys.stderr)
            raise SweepInterrupted("interrupted")
        if too_many:  # Hydra's post-sweep callback will not run: report here
            report_sweep(sweep_dir, interrupted=True)
        if too_many:
            print(f"hexsweep: {too_many}", file=sys.stderr)
            raise SystemExit(1)

    def launcher_n_jobs(self) -> int | None:
        """Trials at once as the launcher sees it: its n_jobs, or what its cluster holds (Ray)."""
        if hasattr(self.launcher, "concurrency"):
            return int(self.launcher.concurrency())
        n = getattr(self.launcher, "params", {}).get("n_jobs") if hasattr(self.launcher, "params") else None
        return n if isinstance(n, int) and n > 0 else None

    def _start(self, study, space, fixed, directions, sweep_dir):
        trial = study.ask(space)
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
        trial.set_user_attr("driver", driver_record(sweep_dir))
        return cfg, trial, job_dir

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
                self._finish(study, t, job_dir)
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
        from hexsweep.search.results import best_summary, study_plots

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

    def __init__(self, storage: Any, running: dict, study: optuna.Study) -> None:
        self.storage, self.running, self.study = storage, running, study
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
                # trials of another driver that died stop beating: fail them (and re-queue
                # them if retry_failed is set) so that the study does not wait on them
                optuna.storages.fail_stale_trials(self.study)
            except Exception as e:  # a storage hiccup must not end the sweep
                log.warning("heartbeat failed: %s", e)
