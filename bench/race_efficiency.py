"""Racing efficiency: the seed's six experiments as a full grid at max_seeds against races (issue 25).

    python bench/race_efficiency.py [--max-seeds 20] [--epochs 3] [--n-jobs 2] [--orders 3]
        [--test friedman] [--alpha 0.05] [--outputs DIR] [--real-race]

One run: the grid (every experiment x seeds 0..max_seeds-1, ``debug=tiny``: data=tiny, a
16-channel 2x2-block network, no early stopping), then the race under ``--orders`` seed orders
(order 0: seeds 0, 1, 2, ...; order i: a fixed shuffle of the same seeds).

The races replay the grid: a hexsweep.train job's result depends only on its configuration and
its seed (same data, same code, seeded torch on the CPU), so the race that runs seed k of a
configuration would get exactly the value the grid got for it. Each replayed race goes through
the sweeper's own plan and decisions (hexsweep/race/plan.py) with ``--n-jobs`` slots and each
job taking the wall time the grid measured for it, so the jobs an asynchronous race starts
before a look eliminates a configuration are counted too. ``--real-race`` also runs order 1 as a
real race (``search=race``) and checks that it eliminates the same configurations at the same
seeds as its replay.

Printed, per order: the race's jobs over the grid's (target <= 0.5), whether the race's final
set contains the grid's best (best mean over all seeds), and whether every configuration the
race eliminated is also worse than the grid's best at alpha on all the grid's seeds (the
race's own test at one look: Friedman + Conover with Holm, or the paired t with Holm), with the
run's wall time. Figures: docs/racing.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import hexsweep_cmd, run_timed

from hexsweep.jobfolder import read_result
from hexsweep.race.plan import COMPLETED, FAILED, Race, RaceJob
from hexsweep.race.stats import RaceDecider, paired_t_all, seed_correlation
from hexsweep.sweep.driver import common_overrides, job_label

JOBS_TARGET = 0.5


def common_args(args: argparse.Namespace, outputs: Path) -> list[str]:
    return ["debug=tiny", f"trainer.epochs={args.epochs}", "trainer.patience=0", "trainer.progress=off",
            "logger=none", f"paths.outputs={outputs}", f"hydra.launcher.n_jobs={args.n_jobs}",
            "hydra.launcher.progress=off", "trainer.checkpoints=false"]


def grid_done(grid: Path, max_seeds: int) -> bool:
    done = [r for job in grid.glob("*/") if (r := read_result(job)) and r.status == COMPLETED]
    return len(done) >= 6 * max_seeds


def run_grid(args: argparse.Namespace, outputs: Path) -> Path:
    """The grid, or what it lacks: a grid folder an earlier run left unfinished is resumed (its
    completed jobs are kept)."""
    grid = outputs / "grid"
    if not grid_done(grid, args.max_seeds):
        cmd = hexsweep_cmd("-m", f"seed=range(0,{args.max_seeds})", "experiment=glob(*)",
                           *common_args(args, outputs), f"hydra.sweep.dir={grid}",
                           *(["resume=true"] if grid.exists() else []))
        try:
            wall, _, _ = run_timed(cmd)
        except SystemExit as e:  # some jobs failed: the table below says how many completed
            print(f"the grid had failures: {str(e)[-1500:]}", file=sys.stderr)
            wall = math.nan
        print(f"grid: {args.max_seeds} seeds x 6 experiments in {wall:.0f} s", file=sys.stderr)
        (outputs / "grid_seconds.txt").write_text(f"{wall:.1f}\n")
    return grid


def read_grid(grid: Path, max_seeds: int) -> tuple[list[list[str]], np.ndarray, np.ndarray, str]:
    """Configurations (overrides other than seed), values[config, seed], durations, direction."""
    rows = {}
    direction = "minimize"
    for job in grid.iterdir():
        record = read_result(job) if job.is_dir() else None
        if not record:
            continue
        overrides = [o for o in record.overrides or [] if o.startswith("experiment=")]
        seed = int((record.config or {}).get("seed", next(
            (o.split("=")[1] for o in record.overrides or [] if o.startswith("seed=")), 0)))
        direction = record.objective.direction if record.objective else direction
        value = record.value if record.status == COMPLETED else None
        rows[(tuple(overrides), seed)] = (value, float(record.wall_time_s or 1.0))
    configs = sorted({k[0] for k in rows})
    values = np.full((len(configs), max_seeds), np.nan)
    durations = np.ones((len(configs), max_seeds))
    for (cfg, seed), (value, wall) in rows.items():
        if seed < max_seeds:
            values[configs.index(cfg), seed] = np.nan if value is None else value
            durations[configs.index(cfg), seed] = wall
    return [list(c) for c in configs], values, durations, direction


def replay(race: Race, values: np.ndarray, durations: np.ndarray, slots: int) -> None:
    """The asynchronous race on the grid's numbers: ``slots`` jobs at once, each lasting what
    the grid's job of that configuration and seed lasted."""
    seed_col = {s: i for i, s in enumerate(range(values.shape[1]))}
    running: list[tuple[float, RaceJob]] = []
    now = 0.0
    while True:
        while len(running) < slots and (pick := race.next_job()) is not None:
            job = race.start(race.next_num(), *pick)
            col = seed_col[job.seed]
            running.append((now + durations[job.config, col], job))
        if not running:
            return
        running.sort(key=lambda x: x[0])
        now, job = running.pop(0)
        v = values[job.config, seed_col[job.seed]]
        race.finish(job.num, COMPLETED if np.isfinite(v) else FAILED, None if not np.isfinite(v) else float(v))


def grid_worse(values: np.ndarray, direction: str, test: str, alpha: float) -> tuple[int, dict[int, float]]:
    """The grid's best (mean over all seeds) and, per configuration, the Holm-adjusted p-value of
    its comparison with the best at one look on every seed (the race's own test)."""
    loss = values if direction == "minimize" else -values
    best = int(np.nanargmin(np.nanmean(loss, axis=1)))
    d = RaceDecider(len(values), direction, alpha, values.shape[1], values.shape[1], test)
    d.update(values, np.ones(values.shape, dtype=bool))
    worse = {e.config: e.p for e in d.eliminations if e.best == best}
    if test == "paired_t" or not worse:  # report the paired t as well when Friedman's gate held
        from itertools import combinations

        from statsmodels.stats.multitest import multipletests

        pairs = list(combinations(range(len(values)), 2))
        _, adj, _, _ = multipletests(paired_t_all(loss, pairs), alpha=alpha, method="holm")
        for (i, j), p in zip(pairs, adj, strict=True):
            other = j if i == best else i if j == best else None
            if other is not None and p < alpha and np.nanmean(loss[other]) > np.nanmean(loss[best]):
                worse.setdefault(other, float(p))
    return best, worse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-seeds", type=int, default=20)
    ap.add_argument("--min-seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--orders", type=int, default=3)
    ap.add_argument("--test", default="friedman", choices=["friedman", "paired_t"])
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--outputs", type=Path, default=None, help="keep the grid here (reused when it holds one)")
    ap.add_argument("--real-race", action="store_true", help="also run order 1 as a real race and compare")
    args = ap.parse_args()
    start = time.monotonic()
    outputs = args.outputs or Path(tempfile.mkdtemp(prefix="race_bench_"))
    outputs.mkdir(parents=True, exist_ok=True)
    grid = run_grid(args, outputs)
    grid_s = time.monotonic() - start
    timed = outputs / "grid_seconds.txt"
    reused = grid_s < 60 and timed.exists()  # a grid an earlier run made: its own time
    if reused:
        grid_s = float(timed.read_text())
    configs, values, durations, direction = read_grid(grid, args.max_seeds)
    common = common_overrides(configs)
    labels = [job_label(c, common) for c in configs]
    best, worse = grid_worse(values, direction, args.test, args.alpha)
    grid_jobs = len(configs) * args.max_seeds
    print(f"grid: {grid_jobs} jobs, {int(np.isfinite(values).sum())} completed, {grid_s:.0f} s"
          f"{' (an earlier run of this script; reused)' if reused else ''}; best "
          f"{labels[best]} (mean {np.nanmean(values[best]):.4f}); worse than it at alpha={args.alpha} on "
          f"{args.max_seeds} seeds: {', '.join(f'{labels[c]} (p={p:.2g})' for c, p in worse.items()) or 'none'}")
    corr = seed_correlation(values)
    if corr:
        print(f"seeds across configurations, all {corr['seeds']} grid seeds: mean Pearson r = {corr['mean_r']:+.2f} "
              f"(from {corr['min_r']:+.2f} to {corr['max_r']:+.2f}); pairing divides the variance of a difference "
              f"by {corr['pairing_gain']:.2f} (median over pairs)")
    rng = np.random.default_rng(2025)
    orders = [list(range(args.max_seeds))] + [list(map(int, rng.permutation(args.max_seeds)))
                                              for _ in range(args.orders - 1)]
    results = []
    for i, seeds in enumerate(orders):
        race = Race(configs, labels, seeds, direction=direction, alpha=args.alpha, min_seeds=args.min_seeds,
                    max_seeds=args.max_seeds, test=args.test)
        replay(race, values, durations, args.n_jobs)
        out = [e.config for e in race.decider.eliminations]
        ratio = len(race.jobs) / grid_jobs
        keeps = best in race.alive
        confirmed = all(c in worse for c in out)
        results.append({"order": i, "seeds": seeds, "jobs": len(race.jobs), "ratio": ratio,
                        "keeps_grid_best": keeps, "eliminated_worse_in_grid": confirmed,
                        "eliminations": [(labels[e.config], e.seeds, e.p) for e in race.decider.eliminations],
                        "verdict": race.verdict()["text"]})
        print(f"order {i} (seeds {','.join(map(str, seeds[:6]))},...): {len(race.jobs)} jobs = {ratio:.2f} of the "
              f"grid ({'meets' if ratio <= JOBS_TARGET else 'misses'} <= {JOBS_TARGET}); final set holds the grid's "
              f"best: {keeps}; every eliminated one worse in the grid at alpha: {confirmed}\n"
              f"    eliminated: {', '.join(f'{labels[e.config]} at {e.seeds}' for e in race.decider.eliminations)}"
              f"\n    verdict: {race.verdict()['text']}")
    if args.real_race and len(orders) > 1:
        sweep = outputs / "race_order1"
        cmd = hexsweep_cmd("-m", "search=race", "experiment=glob(*)", *common_args(args, outputs),
                           f"hydra.sweeper.max_seeds={args.max_seeds}", f"hydra.sweeper.test={args.test}",
                           f"hydra.sweeper.seeds=[{','.join(map(str, orders[1]))}]", f"hydra.sweep.dir={sweep}")
        wall, _, err = run_timed(cmd)
        real = json.loads((sweep / "race.json").read_text())
        got = [(e["label"], e["seeds"]) for e in real["eliminations"]]
        want = [(label, n) for label, n, _ in results[1]["eliminations"]]
        print(f"real race, order 1: {real['jobs_run']} jobs in {wall:.0f} s; same eliminations as its replay: "
              f"{got == want}" + ("" if got == want else f" (real {got}, replay {want})"))
    total = time.monotonic() - start
    print(f"ran {total:.0f} s" + (f" now, the grid {grid_s:.0f} s before" if reused else
                                  f" in all (grid {grid_s:.0f} s)") + f", {args.n_jobs} jobs at once")
    record = {"grid_jobs": grid_jobs, "correlation": corr, "grid_best": labels[best],
              "grid_worse": {labels[c]: p for c, p in worse.items()}, "orders": results, "seconds": total,
              "grid_seconds": grid_s, "args": {k: str(v) for k, v in vars(args).items()}}
    (outputs / "race_efficiency.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
