"""A race's bookkeeping: its configurations, the jobs it started, what to run next, its verdict.

No Hydra here: the sweeper (race/sweeper.py) composes and launches the jobs this plans, and
``bench/race_efficiency.py`` replays a grid's results through the same plan.

Scheduling: when a slot frees, the next job is the next seed of the surviving configuration
with the fewest seeds started (ties: the first configuration), with no round barrier. The
race stops starting jobs when one configuration is left, when every survivor has started
``max_seeds`` seeds, or when ``budget_jobs`` jobs (all runs of this sweep folder together)
have started; it ends when the last running job is back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hexsweep.race.stats import (
    MAX_SEEDS,
    Elimination,
    RaceDecider,
    paired_effect,
    seed_correlation,
    seeds_to_separate,
)

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


@dataclass
class RaceJob:
    num: int
    config: int
    seed_index: int
    seed: int
    state: str = RUNNING  # running | completed | failed | interrupted (run again on resume)
    value: float | None = None
    status: str | None = None  # the job's own status word (jobfolder's, for hexsweep.train)
    reason: str | None = None
    job_dir: str | None = None


class Race:
    def __init__(self, configs: list[list[str]], labels: list[str], seeds: list[int], *, direction: str = "minimize",
                 alpha: float = 0.05, min_seeds: int = 3, max_seeds: int = 20, test: str = "friedman",
                 budget_jobs: int | None = None) -> None:
        self.configs, self.labels, self.seeds = configs, labels, list(seeds)[:max_seeds]
        self.direction, self.alpha, self.test = direction, alpha, test
        self.min_seeds, self.max_seeds, self.budget_jobs = min_seeds, max_seeds, budget_jobs
        self.decider = RaceDecider(len(configs), direction, alpha, min_seeds, max_seeds, test)
        self.values = np.full((len(configs), max_seeds), np.nan)
        self.finished = np.zeros((len(configs), max_seeds), dtype=bool)
        self.jobs: dict[int, RaceJob] = {}
        self.retry: list[RaceJob] = []  # jobs an interrupted run left unfinished: run again first

    # ---- state --------------------------------------------------------------------------
    @property
    def alive(self) -> list[int]:
        return self.decider.alive

    def started(self, config: int) -> set[int]:
        """Seed indices of ``config`` started (running or finished), or queued to run again."""
        return {j.seed_index for j in self.jobs.values() if j.config == config}

    def jobs_started(self) -> int:
        return len(self.jobs)

    def next_num(self) -> int:
        """The job number (and folder) of the next new job: past every job this race ever
        started, a dropped one included, so that no new job runs in another job's folder."""
        return max(self.jobs, default=-1) + 1

    def budget_left(self) -> bool:
        return self.budget_jobs is None or self.jobs_started() < self.budget_jobs

    def jobs_left(self) -> int:
        """The most jobs this race may still run: the unfinished ones to run again, and new seeds of
        the survivors up to max_seeds, as many as the budget allows."""
        new = sum(max(0, self.max_seeds - len(self.started(c))) for c in self.alive)
        if self.budget_jobs is not None:
            new = min(new, max(0, self.budget_jobs - self.jobs_started()))
        return new + sum(j.config in self.alive for j in self.retry)

    def running(self) -> list[RaceJob]:
        return [j for j in self.jobs.values() if j.state == RUNNING]

    # ---- scheduling ---------------------------------------------------------------------
    def next_job(self) -> tuple[int, int] | RaceJob | None:
        """(config, seed index) of the next job to start, an unfinished job to run again, or None."""
        if self.decider.done:
            return None
        while self.retry:
            job = self.retry.pop(0)
            if job.config in self.alive:
                return job
            # its configuration is out: it will not run again, but stays in the race's jobs
            # (interrupted) so that its number, and its folder, are not given to a new job
        if not self.budget_left():
            return None
        counts = [(len(self.started(c)), c) for c in self.alive]
        open_ = [(n, c) for n, c in counts if n < self.max_seeds]
        if not open_:
            return None
        _, config = min(open_)
        taken = self.started(config)
        return config, next(k for k in range(self.max_seeds) if k not in taken)

    def start(self, num: int, config: int, seed_index: int, job_dir: str | None = None) -> RaceJob:
        job = RaceJob(num, config, seed_index, self.seeds[seed_index], job_dir=job_dir)
        self.jobs[num] = job
        return job

    def finish(self, num: int, state: str, value: float | None = None, status: str | None = None,
               reason: str | None = None) -> list[Elimination]:
        """Record how job ``num`` ended; the eliminations this allowed."""
        job = self.jobs[num]
        job.state, job.status, job.reason = state, status or state, reason
        job.value = float(value) if state == COMPLETED and value is not None else None
        if state == INTERRUPTED:
            return []
        self.finished[job.config, job.seed_index] = True
        self.values[job.config, job.seed_index] = job.value if job.value is not None else np.nan
        return self.decider.update(self.values, self.finished)

    # ---- the result ---------------------------------------------------------------------
    def ended_by(self) -> str:
        if not self.alive:
            return "every configuration failed"
        if len(self.alive) == 1:
            return "one configuration left"
        if not self.budget_left() and any(len(self.started(c)) < self.max_seeds for c in self.alive):
            return f"the budget (budget_jobs={self.budget_jobs})"
        return f"max_seeds={self.max_seeds}"

    def ranked_survivors(self) -> list[int]:
        """Survivors, best first, by their mean on the seeds every survivor completed (all their
        seeds when they share none)."""
        alive = list(self.alive)
        x = self.values[alive]
        common = np.isfinite(x).all(axis=0)
        x = x[:, common] if common.any() else x
        done = np.isfinite(x).sum(axis=1)  # a survivor without a completed job yet ranks last,
        # without nanmean's "Mean of empty slice" warning on stderr at every write of race.json
        means = np.where(done > 0, np.nansum(x, axis=1) / np.maximum(done, 1),
                         math.inf if self.direction == "minimize" else -math.inf)
        order = np.argsort(means if self.direction == "minimize" else -means, kind="stable")
        return [alive[i] for i in order]

    def verdict(self, interrupted: bool = False) -> dict[str, Any]:
        if not self.alive:
            return {"kind": "failed", "best": None, "survivors": [], "text": "every configuration failed"}
        ranked = self.ranked_survivors()
        best = ranked[0]
        if len(ranked) == 1:
            return {"kind": "best", "best": self.labels[best], "survivors": [self.labels[best]],
                    "text": f"{self.labels[best]} is best at alpha={self.alpha:g}"}
        n = max(int(self.finished[c].sum()) for c in ranked)
        floor = 0
        if self.test == "friedman":  # two survivors meet in the exact Wilcoxon test: its smallest p is 2 / 2**n
            floor = math.ceil(math.log2(2 / self.decider.level) + 1e-9)
        needed = []
        for c in ranked[1:]:
            need = seeds_to_separate(self.values[c], self.values[best], self.decider.level)
            needed.append(None if need is None else max(need, floor))
        names = ", ".join(self.labels[c] for c in ranked)
        within = "so far (interrupted)" if interrupted else f"within {self.ended_by()}"
        if any(x is None for x in needed):
            more = None
            tail = (f"no number of seeds up to {MAX_SEEDS} would probably separate them (their difference is nil, or "
                    "too small next to the spread between seeds)")
        else:
            more = max(1, max(needed) - n)  # not separated yet: at least one more
            tail = f"{more} seed{'s' if more != 1 else ''} more would probably separate them"
        return {"kind": "not separated", "best": self.labels[best], "survivors": [self.labels[c] for c in ranked],
                "more_seeds": more, "seeds_needed": needed, "text": f"{names} not separated {within}: {tail}"}

    def summary(self, interrupted: bool = False) -> dict[str, Any]:
        """race.json: per configuration its overrides, seeds run, whether and when it was
        eliminated; the eliminations, the looks, the verdict, the jobs."""
        by_config = {e.config: e for e in self.decider.eliminations}
        configs = []
        for c, (overrides, label) in enumerate(zip(self.configs, self.labels, strict=True)):
            mine = sorted((j for j in self.jobs.values() if j.config == c), key=lambda j: j.seed_index)
            e = by_config.get(c)
            done = [j for j in mine if j.state in (COMPLETED, FAILED)]
            vals = [j.value for j in done if j.value is not None]
            configs.append({
                "label": label, "overrides": list(overrides),
                "seeds_run": [j.seed for j in done], "seed_indices": [j.seed_index for j in done],
                "values": [j.value for j in done],
                "completed": len(vals), "failed": sum(j.state == FAILED for j in done),
                "mean": float(np.mean(vals)) if vals else None,
                "eliminated": e is not None,
                "eliminated_at_seeds": e.seeds if e else None,
                "p_value": (None if e is None or not math.isfinite(e.p) else e.p),
                "test": e.test if e else None,
                "eliminated_by": self.labels[e.best] if e and e.best >= 0 else None,
                "effect": e.as_dict()["effect"] if e else None,
                "effect_interval": [e.as_dict()["low"], e.as_dict()["high"]] if e else None,
            })
        ranked = self.ranked_survivors() if self.alive else []
        final = []
        if len(ranked) > 1:  # survivors against the best at the end
            for c in ranked[1:]:
                d, low, high = paired_effect(self.values[c], self.values[ranked[0]])
                final.append({"label": self.labels[c], "effect": _num(d), "effect_interval": [_num(low), _num(high)]})
        return {
            "direction": self.direction, "test": self.test, "alpha": self.alpha, "level_per_look": self.decider.level,
            "min_seeds": self.min_seeds, "max_seeds": self.max_seeds, "budget_jobs": self.budget_jobs,
            "seeds": self.seeds, "ended_by": "interrupted" if interrupted else self.ended_by(),
            "jobs_run": sum(j.state in (COMPLETED, FAILED) for j in self.jobs.values()),
            "grid_jobs": len(self.configs) * self.max_seeds,
            "configs": configs,
            "eliminations": [{**e.as_dict(), "label": self.labels[e.config],
                              "best_label": self.labels[e.best] if e.best >= 0 else None}
                             for e in self.decider.eliminations],
            "survivors_vs_best": final,
            "correlation": seed_correlation(self.values),
            "verdict": self.verdict(interrupted),
            "jobs": [asdict(j) for j in sorted(self.jobs.values(), key=lambda j: j.num)],
        }

    # ---- resume -------------------------------------------------------------------------
    def restore(self, jobs: list[dict[str, Any]]) -> None:
        """The jobs of an earlier run of this race (race.json): finished ones count (the
        eliminations are recomputed from their values), unfinished ones run again first."""
        for raw in sorted(jobs, key=lambda j: j["num"]):
            job = RaceJob(**{k: raw.get(k) for k in RaceJob.__dataclass_fields__})
            if not (0 <= job.config < len(self.configs) and 0 <= job.seed_index < self.max_seeds):
                continue  # a seed past a smaller max_seeds now: not part of this race
            self.jobs[job.num] = job
            if job.state in (COMPLETED, FAILED):
                self.finished[job.config, job.seed_index] = True
                self.values[job.config, job.seed_index] = job.value if job.value is not None else np.nan
            else:
                job.state = INTERRUPTED
                self.retry.append(job)
        self.decider.update(self.values, self.finished)


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
