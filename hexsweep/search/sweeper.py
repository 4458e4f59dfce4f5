"""The hexsweep Optuna sweeper: asynchronous trials, pruning, failures as data, resume.

Design. Hydra's launcher API is batch-based (``launch(batch)`` returns when the whole batch
is done), which makes every slot wait for the slowest trial of its batch. A launcher that has
an asynchronous entry point (the hexsweep launcher's ``launch_async``) gets a feed of trials
instead: the next trial is asked for the moment any job ends (finished, failed or pruned),
keeping ``n_jobs`` trials running (``AsyncLoop``). Any other launcher gets batches of
``n_jobs`` single trials through ``launch`` (``run_batches``).

The parts, along Optuna's lines: search/trials.py asks, prepares and tells one trial (the
same path for both loops); search/lifecycle.py fails orphaned trials, pauses and restarts
trials, and beats their heartbeat; this module sets the study up and runs the loop. What a
job's values are is the app's verdict (sweep/apps.py): a plain app's return value, or
hexsweep.train's job folder. Nothing a job does can crash the sweep; ``max_failure_rate``
(over the whole study) ends it with a clear message.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.trial import TrialState

from hexsweep.cli import first_line
from hexsweep.errors import ConfigError, HexsweepError
from hexsweep.pruners import check_pruner
from hexsweep.search.lifecycle import Heartbeat, fail_orphans, pause, paused_trials
from hexsweep.search.space import grid_points, parse_params
from hexsweep.search.storage import STORAGE_ENV, cli_hint, is_url, open_storage, redact
from hexsweep.search.trials import Prepared, Trials
from hexsweep.sweep.apps import JobApp, app_for, job_dir_of
from hexsweep.sweep.driver import SweepInterrupted
from hexsweep.sweep.launcher import prepared_config
from hexsweep.sweep.owner import own

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


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


def directions_of(direction: Any) -> list[str]:
    dirs = [direction] if isinstance(direction, str) else list(direction)
    for d in dirs:
        if d not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={d!r} is invalid: allowed minimize or maximize (or a list)")
    return dirs


def motpe_removed(*args: Any, **kwargs: Any) -> None:
    """``hydra/sweeper/sampler=motpe``: the official plugin's message (Optuna 4 removed the sampler)."""
    raise ConfigError("The 'motpe' sampler was removed in Optuna 4.0. Use 'hydra/sweeper/sampler=tpe' instead. "
                      "TPESampler now handles multi-objective optimization.")


# Samplers whose seed names a sequence the study itself records, so every driver of a study must
# keep the configured seed: a GridSampler's trial stores an index into the grid its seed shuffled
# (another seed reads the earlier trials' indices as other points, and re-runs some while skipping
# others), and a QMCSampler counts its draws in the study under its seed (the same seed continues
# the sequence). Optuna's docs ask for one seed in every process for both.
SHARED_SEED_SAMPLERS = (optuna.samplers.GridSampler, optuna.samplers.QMCSampler)


def joining_seed(seed: int, held: int) -> int:
    """The sampler seed of a driver that joins a study already holding ``held`` trials.

    An Optuna sampler draws from a generator of its own process, seeded when it is built, and
    no study coordinates the generators of its drivers (optuna issue 4714: drivers of one study
    with one seed propose alike; Optuna's advice is a distinct seed per worker). So a driver that
    continues a study with the seed of the driver before it (``resume=true`` after a finished or
    Ctrl-C'd search) would propose again what that driver proposed first: the random startup
    trials of TPE, every trial of RandomSampler. Mixing in the count keeps a continued search
    reproducible from the study's state while moving it off the earlier sequences. Drivers that
    join at the same count (started together on one shared study, both seeing it empty or
    equally full) still get the same seed: nothing deterministic tells them apart before their
    first trial (their hosts, pids and timestamped sweep folders would make every search
    irreproducible), so such drivers need distinct seeds (hydra.sweeper.sampler.seed), or null."""
    import numpy as np

    return int(np.random.SeedSequence([seed, held]).generate_state(1)[0])  # < 2**32, as numpy's RandomState needs


def grid_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def space_of(study: optuna.Study) -> dict[str, Any]:
    """The search space a study was searched over: recorded at its start, else its trials' params."""
    recorded = study.user_attrs.get("search_space")
    if recorded is not None:
        return dict(recorded)
    space: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        space.update({k: optuna.distributions.distribution_to_json(d) for k, d in t.distributions.items()})
    return space


def check_space(study: optuna.Study, storage_spec: str, space: dict, explicit: bool) -> None:
    """A search that would join a study searched over another space stops before any trial. When
    the user asked to continue it (``explicit``, hexsweep.train's resume=true), a grown or changed
    range is allowed and only what Optuna cannot mix (another kind for the same name) is refused."""
    old = space_of(study)
    new = {k: optuna.distributions.distribution_to_json(d) for k, d in space.items()}
    if not study.trials or not old or old == new:
        return
    clash = []
    for key in sorted(old.keys() & new.keys()):
        try:
            optuna.distributions.check_distribution_compatibility(
                optuna.distributions.json_to_distribution(old[key]), space[key])
        except ValueError:
            clash.append(key)
    if explicit and not clash:
        return

    def show(sp: dict) -> str:
        return "{" + ", ".join(f"{k}: {optuna.distributions.json_to_distribution(v)}" for k, v in sorted(sp.items())) \
            + "}"

    raise ConfigError(f"study {study.study_name!r} in {redact(storage_spec)} was searched over {show(old)}; this "
                      f"search is over {show(new)}: set hydra.sweeper.study_name to start another study")


class SearchSettings:
    """The sweeper's own values, checked once before the study is touched (one line each)."""

    @staticmethod
    def check(p: dict[str, Any]) -> None:
        n = p.get("n_trials", 20)
        if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise ConfigError(f"hydra.sweeper.n_trials={n} is invalid: allowed an integer > 0")
        n = p.get("n_jobs")
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
            raise ConfigError(f"hydra.sweeper.n_jobs={n} is invalid: allowed an integer > 0, or null (the launcher's)")
        rate = p.get("max_failure_rate", 0.5)
        if not (isinstance(rate, int | float) and math.isfinite(rate) and 0 <= rate <= 1):
            raise ConfigError(f"hydra.sweeper.max_failure_rate={rate} is invalid: allowed a number in [0, 1]")
        retry = p.get("retry_failed", 0)
        if not (isinstance(retry, int) and retry >= 0):
            raise ConfigError(f"hydra.sweeper.retry_failed={retry} is invalid: allowed an integer >= 0")
        check_pruner(dict(p.get("pruner") or {}))


class AsyncLoop:
    """Trials through a launcher's asynchronous entry point: the next trial is asked for the
    moment a job ends. Paused trials of an interrupted run of this folder go first."""

    def __init__(self, trials: Trials, app: JobApp, remaining: int, n_trials: int, resume: bool,
                 paused: list, max_failure_rate: float, storage_spec: str | None = None) -> None:
        self.trials, self.app, self.storage_spec = trials, app, storage_spec
        self.remaining, self.n_trials, self.resume = remaining, n_trials, resume
        self.paused, self.max_failure_rate = paused, max_failure_rate
        self.running: dict[int, Prepared] = {}
        self.started = 0
        self.stopped: str | None = None  # why no more trials start: too many failures, a storage error

    def more(self) -> bool:
        study = self.trials.study
        # resume=true joins a study that other drivers may be filling too: n_trials is then the
        # study's total, checked before every new trial
        shared_full = self.resume and len(study.trials) >= self.n_trials
        return self.started < self.remaining and self.stopped is None and not grid_exhausted(study) \
            and not shared_full

    def feed(self) -> DictConfig | None:
        try:
            while self.paused and self.stopped is None:  # first the trials an interrupted run paused
                if (job := self.trials.restart(self.paused.pop(0))) is not None:
                    return self._run(job)
            while self.more():
                self.started += 1
                if (job := self.trials.ask()) is not None:
                    return self._run(job)
                self.stopped = self.trials.failure_check(self.max_failure_rate)  # a trial that could not start
        except OSError as e:  # the storage cannot be written (a full disk, a read-only file)
            self.stopped = storage_failed(e, self.storage_spec)
        return None

    def _run(self, job: Prepared) -> DictConfig:
        self.running[job.trial.number] = job
        return job.cfg

    def done(self, outcome: Any) -> None:
        job = self.running.pop(outcome.num)
        try:
            if outcome.interrupted and self.app.pauses(outcome):
                pause(job.trial)
                return
            self.trials.finish(job.trial, job.job_dir, outcome.ret)
            if self.stopped is None:
                self.stopped = self.trials.failure_check(self.max_failure_rate)
        except OSError as e:
            self.stopped = storage_failed(e, self.storage_spec)

    def beating(self) -> list[int]:
        """The trials to keep alive: running ones, and paused ones not restarted yet."""
        return [j.trial._trial_id for j in list(self.running.values())] + [t._trial_id for t in list(self.paused)]


def storage_failed(e: OSError, spec: str | None) -> str:
    where = redact(spec) if spec else (e.filename or "in memory")
    return (f"the Optuna storage {where} cannot be written ({e.strerror or e}): no more trials started; "
            "the trial it could not record is failed as orphaned by the next search of this study")


def run_batches(trials: Trials, launcher: Any, remaining: int, n_jobs: int, max_failure_rate: float) -> str | None:
    """Any other Hydra launcher: batches of n_jobs single trials (each batch waits for its slowest),
    prepared as the asynchronous loop prepares them."""
    asked = 0
    while asked < remaining and not grid_exhausted(trials.study):
        batch = []
        for _ in range(min(n_jobs, remaining - asked)):
            asked += 1
            if (job := trials.ask()) is not None:
                batch.append(job)
        if batch:
            returns = launcher.launch([j.overrides for j in batch], initial_job_idx=batch[0].trial.number)
            for job, ret in zip(batch, returns, strict=True):
                job_dir = job_dir_of(ret, job.job_dir)
                job.trial.set_user_attr("job_dir", str(job_dir))
                trials.finish(job.trial, job_dir, ret)
        if (msg := trials.failure_check(max_failure_rate)) is not None:
            return msg
    return None


class OptunaSearch:
    def __init__(self, params: dict[str, Any]) -> None:
        self.p = params
        self.fixed_keys: list[str] = []
        self.app = app_for(None)  # the task's app, once setup() knows the task
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: Any = None
        self.task_function: Any = None
        self.study_name = "hexsweep"

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

    def _sampler_config(self, space: dict) -> dict:
        cfg = OmegaConf.to_container(OmegaConf.create(self.p.get("sampler") or {}), resolve=True)
        if cfg and str(cfg.get("_target_", "")).endswith("GridSampler") and "search_space" not in cfg:
            cfg["search_space"] = {key: grid_points(key, d) for key, d in space.items()}
        return cfg

    def _sampler(self, space: dict) -> optuna.samplers.BaseSampler:
        """The sampler as configured: the one of a fresh study (built before the study is touched,
        so that a bad sampler setting stops the search first)."""
        cfg = self._sampler_config(space)
        if not cfg:
            return optuna.samplers.TPESampler()
        if str(cfg.get("_target_", "")).endswith(".motpe_removed"):
            motpe_removed()
        return instantiate(cfg)

    def _joining_sampler(self, sampler: optuna.samplers.BaseSampler, space: dict, held: int, name: str):
        """The sampler of a driver that joins a study already holding ``held`` trials: a seeded one
        is built again with ``joining_seed``, unless its seed is the study's (SHARED_SEED_SAMPLERS).
        A seed of null stays unseeded; a seed numpy cannot take is left for Optuna to refuse."""
        if isinstance(sampler, SHARED_SEED_SAMPLERS):
            return sampler
        cfg = self._sampler_config(space)
        seed = cfg.get("seed") if cfg else None
        if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
            return sampler
        cfg["seed"] = joining_seed(seed, held)
        log.info("study %r holds %d trials: sampler seed %d -> %d (from the seed and that count, so that this "
                 "driver does not propose again what earlier drivers did; drivers joining together need "
                 "distinct seeds)", name, held, seed, cfg["seed"])
        return instantiate(cfg)

    def _storage_spec(self) -> str | None:
        """The storage: a journal file (the default value, ``<outputs>/optuna/studies.journal``) or an
        RDB URL; None (``storage: null``) is an in-memory study, fresh every run, as in the official plugin."""
        spec = self.p.get("storage")
        if spec is None:
            return None
        spec = str(spec)
        if is_url(spec):
            return spec
        path = Path(spec).expanduser().resolve()
        if path.is_dir():
            raise ConfigError(f"hydra.sweeper.storage={spec} is invalid: it is a folder; allowed a journal file "
                              "(<name>.journal) or an RDB URL (sqlite:///..., postgresql://...)")
        return str(path)

    def _study(self, storage_spec: str | None, name: str, sampler, directions: list[str], joins: bool, space: dict):
        if storage_spec is None:
            storage = optuna.storages.InMemoryStorage()
            return storage, optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                                directions=directions)
        storage = open_storage(storage_spec, self.p.get("heartbeat_interval"), self.p.get("grace_period"),
                               int(self.p.get("retry_failed") or 0))
        try:
            existing = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            existing = None
        if existing is not None and existing.trials and not joins:
            raise ConfigError(
                f"study {name!r} already has {len(existing.trials)} trials in {redact(storage_spec)}: "
                "add resume=true to continue it, or set hydra.sweeper.study_name to start another")
        if existing is not None and existing.trials:
            sampler = self._joining_sampler(sampler, space, len(existing.trials), name)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                                    load_if_exists=True)
        if existing is not None and [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"study {name!r} has directions {[d.name.lower() for d in study.directions]}, "
                              f"but hydra.sweeper.direction is {directions}")
        check_space(study, storage_spec, space, explicit=self.app.resumes(self.config))
        if "search_space" not in study.user_attrs or not study.trials:
            study.set_user_attr("search_space", {k: optuna.distributions.distribution_to_json(d)
                                                 for k, d in space.items()})
        return storage, study

    def _compose(self, overrides: list[str], num: int) -> DictConfig:
        return prepared_config(self.hydra_context, self.config, self.app, overrides, num)

    def _precheck(self, trials: Trials) -> None:
        """The values every trial shares (fixed on the command line, the link to its trial),
        checked once before the study is touched: a bad one is one line naming it, instead of a
        search whose every trial fails. (The pruner's settings were checked as the user wrote
        them, hydra.sweeper.pruner.*, by SearchSettings.)"""
        try:
            self._compose([*trials.fixed, *trials.link(0)], 0)
        except HexsweepError as e:
            raise ConfigError(first_line(str(e))) from None

    # ---- the sweep ---------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        cfg = self.config  # a HexsweepError here is one line from the plugin (exit_on_error)
        SearchSettings.check(self.p)
        if hasattr(self.launcher, "check"):  # the launcher's values, as a list launch checks them
            self.launcher.check()
        directions = directions_of(self.p.get("direction", "minimize"))
        space, fixed = self._space(arguments)
        self.app.check_search(directions, self.p.get("metrics"), self.p)
        storage_spec = self._storage_spec()
        self.study_name = self.p.get("study_name") or "hexsweep"
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).resolve()
        sampler = self._sampler(space)
        # a placeholder study: the precheck needs only the link's overrides
        trials = Trials(None, self.app, cfg, self.p, self.study_name, space, fixed, directions, sweep_dir,
                        self._compose)
        self._precheck(trials)
        storage, study = self._study(storage_spec, self.study_name, sampler, directions,
                                     self.app.joins_study(cfg), space)
        trials.study = study
        if storage_spec is not None:
            warn_if_shared_journal(storage_spec, self.launcher)
        if self.fixed_keys:
            log.info("fixed on the command line, not searched: %s", ", ".join(self.fixed_keys))
        study.set_user_attr("fixed_on_command_line", [a for a in fixed if a.partition("=")[0].lstrip("+~")
                                                      in self.fixed_keys])
        n_trials = int(self.p.get("n_trials", 20))
        if isinstance(study.sampler, optuna.samplers.GridSampler):  # as the official plugin: at most the grid
            n_trials = min(n_trials, math.prod(len(grid_points(k, d)) for k, d in space.items()))
        resuming = self.app.resumes(cfg)
        remaining = n_trials - len(study.trials) if resuming else n_trials
        if storage_spec is not None:
            os.environ[STORAGE_ENV] = storage_spec  # how jobs reach the storage: never through their config
        else:
            os.environ.pop(STORAGE_ENV, None)  # an in-memory study: its jobs report to nobody
        redact_storage(cfg)
        own(sweep_dir, wait=self.app.waits_for_owner(cfg))  # one driver per sweep folder
        # after own(): a driver of this folder that resume=wait waited for has ended (and paused its trials)
        async_jobs = hasattr(self.launcher, "launch_async")
        paused = paused_trials(study, sweep_dir, self.app) if resuming and async_jobs else []
        fail_orphans(study, storage, sweep_dir, paused, int(self.p.get("retry_failed") or 0))
        continued = {t.number for t in paused}
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        n_jobs = self._n_jobs(max(remaining, 1))
        log.info("optuna study %r in %s: %d trials to run (%d in the study), %d at once; %s",
                 self.study_name, redact(storage_spec) if storage_spec else "memory", max(remaining, 0),
                 len(study.trials), n_jobs, "asynchronous" if async_jobs else "in batches")
        if paused:
            log.info("continuing %d paused trial(s) from their last.pt: %s", len(paused),
                     ", ".join(str(t.number) for t in paused))
        max_failure_rate = float(self.p.get("max_failure_rate", 0.5))
        first_trial = len(study.trials)  # this search's trials are numbered from here (others may interleave)
        interrupted = False
        if async_jobs:
            loop = AsyncLoop(trials, self.app, max(remaining, 0), n_trials, resuming, paused,
                             max_failure_rate, storage_spec)
            try:
                with Heartbeat(storage, study, loop.beating):
                    self.launcher.launch_async(loop.feed, loop.done, max(remaining, 0) + len(paused), n_jobs)
            except SweepInterrupted:
                interrupted = True
            stopped = loop.stopped
        else:
            stopped = run_batches(trials, self.launcher, remaining, n_jobs, max_failure_rate)
        self._finish_search(study, sweep_dir, storage_spec, interrupted, stopped, first_trial, continued)

    def _n_jobs(self, remaining: int) -> int:
        """Trials at once: the sweeper's n_jobs, else the launcher's (its n_jobs, or what its cluster
        holds), else what the machine holds for this app."""
        if self.p.get("n_jobs"):
            return int(self.p["n_jobs"])
        if hasattr(self.launcher, "n_jobs_for"):
            return int(self.launcher.n_jobs_for(remaining))
        return self.app.default_n_jobs(self.config, remaining)

    def _finish_search(self, study: optuna.Study, sweep_dir: Path, storage_spec: str | None, interrupted: bool,
                       stopped: str | None, first_trial: int, continued: set[int]) -> None:
        try:
            self._report(study, sweep_dir, storage_spec)
            write_optimization_results(study, sweep_dir)
        except OSError as e:
            log.error("cannot write the study's summary in %s: %s", sweep_dir, e.strerror or e)
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
        if stopped:  # Hydra's post-sweep callback will not run: report here
            self.app.report(sweep_dir, interrupted=True, config=self.config)
            raise SearchStopped(stopped)
        if (why := nothing_completed(study, first_trial, continued)) is not None:
            raise SearchStopped(why)

    def _report(self, study: optuna.Study, sweep_dir: Path, storage_spec: str | None) -> None:
        from hexsweep.report.end import defer_plots, plots_of
        from hexsweep.report.study import best_summary, study_plots

        plots = plots_of(self.config)
        if plots == "background" and storage_spec is not None:
            # drawn after the last line with the report's (report/draw.py), from the storage
            defer_plots(sweep_dir, optuna_study=study.study_name)
        elif plots != "off":  # an in-memory study ends with this process: now or never
            try:
                study_plots(study, sweep_dir)
            except Exception as e:  # plots are a bonus; a plotting error must not hide the results
                log.warning("optuna plots failed: %s", e)
        text = best_summary(study)
        where = (f"Storage: `{redact(storage_spec)}` (Optuna CLI: `optuna trials --study-name {study.study_name} "
                 f"{cli_hint(storage_spec)}`)") if storage_spec else \
            "Storage: in memory (hydra.sweeper.storage=null): the study ends with this run"
        (sweep_dir / "study.md").write_text(f"# Optuna study `{study.study_name}`\n\n{where}\n\n{text}\n")
        print(f"[hexsweep] study {study.study_name!r}: {text.splitlines()[0] if text else ''}", file=sys.stderr)
