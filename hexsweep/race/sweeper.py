"""The race sweeper (``hydra/sweeper=hexsweep_race``): which configuration is best, with the fewest jobs.

The configurations are the sweep's overrides, split as Hydra's basic sweeper splits them (the
cartesian product). Every configuration runs seeds 0, 1, ... of one shared seed list (the
app's ``seed`` key, or ``seed_key``), so that seed k pairs across configurations; after
``min_seeds`` the race drops the configurations that are significantly worse than the best
(race/stats.py) and spends the next jobs on the survivors only (race/plan.py).

With the hexsweep launcher the race is asynchronous: the launcher asks for the next job the
moment a slot frees (``launch_async``), and gets the next seed of the surviving configuration
with the fewest seeds. With any other launcher it runs in batches through Hydra's
``launch``, each batch filling the launcher's ``n_jobs`` (or one seed per survivor).

Every finished job is written to ``race.json`` at once, so that ``resume=true`` (for
hexsweep.train; ``hydra.launcher.resume=true`` for another app) continues the race in its
folder: the jobs that finished count, the eliminations are recomputed from their values, and
jobs an interruption stopped run again in their own folders.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from omegaconf import DictConfig, OmegaConf

from hexsweep.atomic import atomic_write_json
from hexsweep.cli import first_line
from hexsweep.errors import ConfigError, HexsweepError
from hexsweep.race.plan import COMPLETED, FAILED, INTERRUPTED, RUNNING, Race, RaceJob
from hexsweep.race.stats import TESTS
from hexsweep.sweep.apps import app_for, job_dir_of
from hexsweep.sweep.driver import common_overrides, job_label
from hexsweep.sweep.launcher import compose_job
from hexsweep.sweep.owner import own

log = logging.getLogger(__name__)
RACE_JSON = "race.json"


def without_resume(overrides: list[str], keys: set[str]) -> list[str]:
    """A configuration's overrides without the app's resume ``keys`` (``resume=...`` for
    hexsweep.train), which a resumed race's command adds."""
    return [o for o in overrides if o.partition("=")[0].lstrip("+~") not in keys]


class RaceStopped(HexsweepError):
    """The race ended without an answer: no job of any configuration completed."""

    exit_code = 1


def check_params(p: dict[str, Any]) -> None:
    """One line, before any job starts, for a sweeper value that cannot work."""
    def bad(key: str, allowed: str) -> ConfigError:
        return ConfigError(f"hydra.sweeper.{key}={p.get(key)} is invalid: allowed {allowed}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not (is_int(p.get("min_seeds")) and p["min_seeds"] >= 2):
        raise bad("min_seeds", "an integer >= 2")
    if not (is_int(p.get("max_seeds")) and p["max_seeds"] >= p["min_seeds"]):
        raise bad("max_seeds", f"an integer >= min_seeds ({p['min_seeds']})")
    alpha = p.get("alpha")
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0 < alpha < 1):
        raise bad("alpha", "a number between 0 and 1 (exclusive)")
    budget = p.get("budget_jobs")
    if budget is not None and not (is_int(budget) and budget >= 1):
        raise bad("budget_jobs", "an integer >= 1, or null (no budget)")
    if p.get("test") not in TESTS:
        raise bad("test", " or ".join(TESTS))
    if not (isinstance(p.get("seed_key"), str) and p["seed_key"].strip()):
        raise bad("seed_key", "the name of the app's seed key, e.g. seed")
    if p.get("direction") not in (None, "minimize", "maximize"):
        raise bad("direction", "minimize, maximize, or null (the app's own direction, else minimize)")
    seeds = p.get("seeds")
    if seeds is not None and not (isinstance(seeds, list | tuple) and all(is_int(s) for s in seeds)
                                  and len(set(seeds)) == len(seeds) and len(seeds) >= p["max_seeds"]):
        raise bad("seeds", f"null (0, 1, 2, ...) or a list of at least max_seeds ({p['max_seeds']}) distinct integers")


class RaceSearch:
    def __init__(self, params: dict[str, Any]) -> None:
        self.p = {k: (OmegaConf.to_container(v) if OmegaConf.is_config(v) else v) for k, v in params.items()}
        self.app = app_for(None)
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.app = app_for(task_function)

    # ---- set-up -----------------------------------------------------------------------
    def configurations(self, arguments: list[str]) -> list[list[str]]:
        """The cartesian product of the sweep's overrides, as Hydra's basic sweeper makes it."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        # with the config loader, as the basic sweeper: glob() lists the options of a config group
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(arguments)
        key = self.p["seed_key"]
        for o in parsed:
            if o.get_key_element().lstrip("+~") == key and not o.is_hydra_override():
                raise ConfigError(f"{key} is set by the race (seed k of every configuration is seed k of the "
                                  f"race): drop {o.input_line}; hydra.sweeper.seeds lists other seeds")
        batches = BasicSweeper.split_arguments(parsed, None)
        configs = [list(c) for c in batches[0]] if batches else [[]]
        if len(configs) < 2:
            raise ConfigError("a race needs at least 2 configurations: sweep over some, "
                              "e.g. 'experiment=glob(*)' or lr=1e-3,3e-3")
        return configs

    def direction(self) -> str:
        return str(self.p.get("direction") or self.app.objective(self.config)[1] or "minimize")

    def metric(self) -> str:
        return str(self.app.objective(self.config)[0] or "the task's return value")

    def job_overrides(self, race: Race, config: int, seed_index: int) -> list[str]:
        key = self.p["seed_key"]
        has_key = OmegaConf.select(self.config, key, default="__absent__") != "__absent__"
        extra = [f"{key if has_key else '+' + key}={race.seeds[seed_index]}"]
        own_dir = self.app.objective(self.config)[1]
        if own_dir is not None and own_dir != race.direction:  # the app's jobs optimise the race's direction
            taken = {o.partition("=")[0].lstrip("+~") for o in race.configs[config]}
            extra += self.app.direction_overrides(self.config, race.direction, taken)
        return [*race.configs[config], *extra]

    def resuming(self) -> bool:
        cfg = self.config
        return self.app.resumes(cfg) or bool(OmegaConf.select(cfg, "hydra.launcher.resume", default=False))

    def _new_race(self, configs: list[list[str]]) -> Race:
        common = common_overrides(configs)
        labels = [job_label(c, common) for c in configs]
        seeds = self.p.get("seeds") or list(range(self.p["max_seeds"]))
        return Race(configs, labels, seeds, direction=self.direction(), alpha=float(self.p["alpha"]),
                    min_seeds=self.p["min_seeds"], max_seeds=self.p["max_seeds"], test=self.p["test"],
                    budget_jobs=self.p.get("budget_jobs"))

    def _restore(self, race: Race, sweep_dir: Path) -> None:
        path = sweep_dir / RACE_JSON
        if not path.exists():
            return
        if not self.resuming():
            raise ConfigError(f"{sweep_dir} already holds a race ({RACE_JSON}): add resume=true to continue it "
                              "(hydra.launcher.resume=true for an app without a resume key), or choose "
                              "another hydra.sweep.dir")
        try:
            old = json.loads(path.read_text())
            old_configs = [c["overrides"] for c in old["configs"]]
            jobs = old["jobs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} cannot be read ({e}): it is not a race this version wrote") from None
        keys = {o.partition("=")[0] for o in self.app.resume_overrides()}
        if [without_resume(c, keys) for c in old_configs] != [without_resume(c, keys) for c in race.configs]:
            raise ConfigError(f"the race in {sweep_dir} raced other configurations "
                              f"({len(old_configs)}: {', '.join(' '.join(c) for c in old_configs[:3])}...): "
                              "resume it with the same sweep overrides")
        for j in jobs:
            k = j.get("seed_index", -1)
            if 0 <= k < len(race.seeds) and j.get("seed") != race.seeds[k]:
                raise ConfigError(f"the race in {sweep_dir} ran seed index {k} as seed {j.get('seed')}, now "
                                  f"{race.seeds[k]}: resume it with the same hydra.sweeper.seeds")
        race.restore(jobs)
        log.info("race resumed in %s: %d jobs finished, %d to run again, %d configurations left",
                 sweep_dir, sum(j.state in (COMPLETED, FAILED) for j in race.jobs.values()), len(race.retry),
                 len(race.alive))

    def _precheck(self, race: Race, sweep_dir: Path) -> None:
        """Every configuration composed and validated once, before any job starts: a bad value is
        one line naming the configuration, instead of a race whose every job fails."""
        for c in range(len(race.configs)):
            try:
                self.app.validate(compose_job(self.hydra_context, self.config, sweep_dir,
                                              self.job_overrides(race, c, 0), 0))
            except HexsweepError as e:
                raise ConfigError(f"{race.labels[c]}: {first_line(str(e))}") from None
            except Exception as e:  # Hydra's and OmegaConf's errors on a bad override
                raise ConfigError(f"{race.labels[c]}: {first_line(str(e))}") from None

    # ---- the race ---------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        from hexsweep.sweep.driver import SweepInterrupted

        check_params(self.p)
        if hasattr(self.launcher, "check"):
            self.launcher.check()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        race = self._new_race(self.configurations(arguments))
        self._precheck(race, sweep_dir)
        own(sweep_dir, wait=self.app.waits_for_owner(self.config))  # one driver per sweep folder
        self._restore(race, sweep_dir)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.race, self.sweep_dir = race, sweep_dir
        async_jobs = getattr(self.launcher, "async_jobs", False)
        log.info("race of %d configurations (%s, alpha=%g, seeds %d..%d) in %s, %s", len(race.configs),
                 race.test, race.alpha, race.min_seeds, race.max_seeds, sweep_dir,
                 "asynchronous" if async_jobs else "in batches")
        self._write()
        interrupted = False
        try:
            if async_jobs:
                self._run_async(race)
            else:
                self._run_batched(race)
        except SweepInterrupted:
            interrupted = True
        self._write(interrupted, final=True)
        verdict = race.verdict(interrupted)
        if interrupted:
            print(f"[hexsweep] race interrupted after {race.summary()['jobs_run']} jobs; add resume=true (or "
                  "hydra.launcher.resume=true for a plain app) to the same command with "
                  f"hydra.sweep.dir={sweep_dir} to continue it", file=sys.stderr)
            raise SweepInterrupted("interrupted")
        if (why := self._nothing_completed(race)) is not None:
            self.app.report(sweep_dir, interrupted=True, config=self.config)  # Hydra's post-sweep callback will not run
            raise RaceStopped(why)
        print(f"[hexsweep] race: {verdict['text']} ({race.summary()['jobs_run']} jobs; a full grid: "
              f"{len(race.configs) * race.max_seeds}); {sweep_dir / 'race.md'}", file=sys.stderr)

    def _start(self, race: Race, pick: tuple[int, int] | RaceJob, num: int) -> tuple[RaceJob, list[str]]:
        if isinstance(pick, RaceJob):  # a job an interruption stopped: again, in its own folder
            pick.state = RUNNING
            return pick, self.job_overrides(race, pick.config, pick.seed_index)
        config, seed_index = pick
        return race.start(num, config, seed_index), self.job_overrides(race, config, seed_index)

    def _run_async(self, race: Race) -> None:
        def feed() -> DictConfig | None:
            while (pick := race.next_job()) is not None:
                job, overrides = self._start(race, pick, race.next_num())
                try:
                    cfg = self.launcher.prepare(overrides, job.num)
                except HexsweepError as e:  # cannot happen after the precheck, but must not end the race
                    self._finished(race, job, FAILED, None, "invalid", first_line(str(e)))
                    continue
                job.job_dir = str(self.sweep_dir / str(cfg.hydra.sweep.subdir))
                return cfg
            return None

        def on_done(outcome: Any) -> None:
            job = race.jobs[outcome.num]
            verdict = self.app.verdict(outcome.ret, outcome.job_dir)
            job.job_dir = str(outcome.job_dir)
            if verdict.state != "completed" and getattr(outcome, "interrupted", False):
                self._finished(race, job, INTERRUPTED, None, verdict.status, verdict.reason)
                return
            self._settle(race, job, verdict)

        total = max(race.jobs_left(), 1)  # the progress bar's total, and at most as many jobs at once
        self.launcher.launch_async(feed, on_done, total, self.launcher.n_jobs_for(total))

    def _run_batched(self, race: Race) -> None:
        """Any other Hydra launcher: batches through ``launch`` (each waits for its slowest job)."""
        n = getattr(self.launcher, "params", {}).get("n_jobs") if hasattr(self.launcher, "params") else None
        while True:
            size = n if isinstance(n, int) and n > 0 else max(1, len(race.alive))
            batch: list[tuple[RaceJob, list[str]]] = []
            while len(batch) < size and (pick := race.next_job()) is not None:
                batch.append(self._start(race, pick, race.next_num()))
            if not batch:
                return
            # one launch per run of consecutive job numbers (Hydra numbers a batch from its first)
            runs: list[list[tuple[RaceJob, list[str]]]] = []
            for item in sorted(batch, key=lambda b: b[0].num):
                if runs and runs[-1][-1][0].num + 1 == item[0].num:
                    runs[-1].append(item)
                else:
                    runs.append([item])
            for run in runs:
                returns = self.launcher.launch([o for _, o in run], initial_job_idx=run[0][0].num)
                for (job, _), ret in zip(run, returns, strict=True):
                    job_dir = job_dir_of(ret, self.sweep_dir / str(job.num))
                    job.job_dir = str(job_dir)
                    self._settle(race, job, self.app.verdict(ret, job_dir))

    def _settle(self, race: Race, job: RaceJob, verdict: Any) -> None:
        if verdict.state == "completed" and verdict.values and math.isfinite(verdict.values[0]):
            self._finished(race, job, COMPLETED, verdict.values[0], verdict.status, None)
        else:  # failed, or pruned (no objective to race on)
            self._finished(race, job, FAILED, None, verdict.status, verdict.reason)

    def _finished(self, race: Race, job: RaceJob, state: str, value: float | None, status: str | None,
                  reason: str | None) -> None:
        for e in race.finish(job.num, state, value, status, reason):
            if e.test == "failed":
                log.warning("race: %s dropped: its first %d jobs failed", race.labels[e.config], e.seeds)
            else:
                log.info("race: %s eliminated at %d seeds (%s, p=%.3g < %.3g against %s)", race.labels[e.config],
                         e.seeds, e.test, e.p, e.level, race.labels[e.best])
        self._write()

    def _nothing_completed(self, race: Race) -> str | None:
        finished = [j for j in race.jobs.values() if j.state in (COMPLETED, FAILED)]
        if any(j.state == COMPLETED for j in finished) or not finished:
            return None if finished or race.jobs else "the race ran no job"
        counts = Counter(j.status or "failed" for j in finished)
        first = min(finished, key=lambda j: j.num)
        by = ", ".join(f"{n} {k}" for k, n in counts.most_common())
        return (f"no job of the race completed ({len(finished)} jobs: {by}); first: job {first.num} "
                f"({race.labels[first.config]} {self.p['seed_key']}={first.seed}): {first.reason or first.status}")

    def _write(self, interrupted: bool = False, final: bool = False) -> None:
        """race.json after every job (what resume reads); race.md and race.png at the end."""
        from hexsweep.race.output import write_outputs
        from hexsweep.report.end import plots_of

        summary = self.race.summary(interrupted)
        summary.update({"metric": self.metric(), "seed_key": self.p["seed_key"]})
        if final:
            write_outputs(summary, self.sweep_dir, plots_of(self.config))
        else:
            atomic_write_json(self.sweep_dir / RACE_JSON, summary)
