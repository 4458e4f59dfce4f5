"""Tuning efficiency: TPE searches with a pruner vs the same searches without pruning, over sampler seeds.

    python bench/tuning_efficiency.py [--seeds 0 1 2] [--pruner default] [--pruner hyperband:min_resource=1]
        [--preset tiny] [--trials 20] [--epochs 8] [--n-jobs 1] [--parallel 2] [--outputs DIR]
        [--budget 0.5 --budget-trials 40]

For each sampler seed, one search=hex_tpe search runs without pruning
(``hydra.sweeper.pruner.name=none``) and one per pruner candidate, all with that seed, the
same trial count, epochs and data. A candidate is ``NAME[:KEY=VALUE,...]``: NAME is a pruner
(none, median, percentile, successive_halving, hyperband), each KEY=VALUE becomes
``hydra.sweeper.pruner.KEY=VALUE`` (e.g. reduction_factor=2) and each +KEY=VALUE
``+hydra.sweeper.pruner.KEY=VALUE`` (a key the sweeper's pruner config lacks); ``default``
is search=hex_tpe's own pruner, unchanged, and is the candidate when --pruner is not given.

Printed: each seed's unpruned epochs and best objective; then per candidate and seed the
epochs trained (the compute) as a ratio pruned/unpruned and the gap of the best objective,
(pruned best - unpruned best) / |unpruned best| in % (minimised: negative is better), with
the trials pruned and failed; then the mean over seeds, the worst seed, the maximum of each
ratio over seeds, and whether both targets hold for the mean AND every seed. Targets (issue
11, P5): epochs ratio <= 0.50 and best gap <= +1%.

Defaults, chosen so that one candidate over 3 seeds costs well under 30 minutes on 2 CPU
cores: search=hex_tpe's own trial count (20) and epochs (8), so that its default pruner is
measured where it is used; data=tiny (a 5x5 board generated in seconds, once per run, for
all searches): a trial takes about 10 s alone, an unpruned search 2 to 4 minutes with two
searches sharing the 2 cores, so the 3 unpruned searches (shared by all candidates of a
run) take about 5 minutes of the run and each candidate about 5 more; ``--n-jobs 1`` so
that a seeded search is reproducible (with parallel trials the sampler's history depends on timing) and a
pruned search proposes the same trials as its unpruned twin until it prunes a trial the
sampler would have counted among its best; ``--parallel 2`` searches at once, sharing one
pool of parallel x n_jobs CPU slots (resources.cpu_slots: all searches share one outputs
root, hence one slot pool); trainer.patience=0 so that only the pruner stops trials early.
Every search gets its own study name in one outputs root: a temporary folder, or
``--outputs DIR``, where a finished search of the same name is reused instead of run again
(so candidates can be added to a run later, against the same unpruned searches).

``--budget F`` asks the other question pruning is used for: the same compute, more trials. Each
pruned search then runs ``--budget-trials`` trials (default twice --trials) and is scored on its
trials in order, up to the last one that keeps its epochs within F x the unpruned search's
epochs: with one trial at a time and a seeded sampler (which does not know n_trials), that is
exactly the search a user would have run with n_trials set to that count. The trials counted
are printed per seed.
Figures and what they mean: docs/pruning.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
from common import hexsweep_cmd, run_timed

from hexsweep.search.storage import open_storage

EPOCHS_TARGET = 0.50  # pruned epochs / unpruned epochs, at most
GAP_TARGET = 1.0  # best objective of the pruned search above the unpruned one, at most, in %


def parse_candidate(spec: str) -> list[str]:
    """``NAME[:KEY=VALUE,...]`` -> sweeper overrides; ``default`` -> none (hex_tpe's pruner)."""
    name, _, rest = spec.partition(":")
    if name == "default":
        if rest:
            raise SystemExit(f"--pruner {spec}: 'default' takes no settings")
        return []
    pairs = [p for p in rest.split(",") if p]
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--pruner {spec}: expected KEY=VALUE, got {p!r}")
    # +KEY=VALUE: a key the sweeper's registered pruner config lacks (hexsweep's jobs may know it)
    return [f"hydra.sweeper.pruner.name={name}",
            *(f"+hydra.sweeper.pruner.{p[1:]}" if p.startswith("+") else f"hydra.sweeper.pruner.{p}" for p in pairs)]


def study_name(label: str, args: argparse.Namespace, seed: int, trials: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")
    jobs = "" if args.n_jobs == 1 else f"-j{args.n_jobs}"
    return f"{slug}-{args.preset}-t{trials}-e{args.epochs}{jobs}-s{seed}"


def load(root: str, name: str) -> optuna.Study | None:
    storage = open_storage(str(Path(root) / "optuna/studies.journal"))
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def epochs_run(trial: optuna.trial.FrozenTrial) -> int:
    result = Path(trial.user_attrs["job_dir"]) / "result.json"
    return json.loads(result.read_text()).get("epochs_run") or 0


def summarise(trials: list[optuna.trial.FrozenTrial]) -> dict:
    states = [t.state.name for t in trials]
    done = [t.value for t in trials if t.state.name == "COMPLETE"]
    return {"epochs": sum(map(epochs_run, trials)), "best": min(done) if done else float("inf"),
            "trials": len(trials), "pruned": states.count("PRUNED"), "complete": states.count("COMPLETE"),
            "failed": states.count("FAIL")}


def within(trials: list[optuna.trial.FrozenTrial], epochs: float) -> list[optuna.trial.FrozenTrial]:
    """The trials in number order up to the last one whose running epoch total stays within ``epochs``."""
    ordered = sorted(trials, key=lambda t: t.number)
    totals = itertools.accumulate(map(epochs_run, ordered))
    return [t for t, total in zip(ordered, totals, strict=True) if total <= epochs]


def run_search(root: str, name: str, args: argparse.Namespace, seed: int, pruner: list[str],
               trials: int) -> list[optuna.trial.FrozenTrial]:
    study = load(root, name)
    finished = study is not None and sum(t.state.is_finished() for t in study.trials) >= trials
    if not finished:
        if study is not None:
            raise SystemExit(f"{root}: study {name} exists but is unfinished; remove it or use another --outputs")
        cmd = hexsweep_cmd("-m", "search=hex_tpe", f"data={args.preset}", f"paths.outputs={root}",
                           f"hydra.sweeper.study_name={name}", f"hydra.sweeper.n_trials={trials}",
                           f"hydra.sweeper.n_jobs={args.n_jobs}", f"trainer.epochs={args.epochs}",
                           f"hydra.sweeper.sampler.seed={seed}", "trainer.patience=0", "strength.games=0",
                           f"resources.cpu_slots={args.parallel * args.n_jobs}", "hydra.launcher.progress=off",
                           *pruner)
        run_timed(cmd)
        study = load(root, name)
    return study.trials


def verdict(ratio: float, gap: float) -> str:
    return "met" if ratio <= EPOCHS_TARGET and gap <= GAP_TARGET else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    parser.add_argument("--pruner", action="append", default=None,
                        help="a candidate, NAME[:KEY=VALUE,...] or default (repeat for more; default: default)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-jobs", type=int, default=1, help="trials at once within one search")
    parser.add_argument("--parallel", type=int, default=2, help="searches at once")
    parser.add_argument("--outputs", default=None, help="outputs root to keep and reuse (default: a temporary one)")
    parser.add_argument("--budget", type=float, default=None,
                        help="score each pruned search on its trials within this fraction of the unpruned epochs")
    parser.add_argument("--budget-trials", type=int, default=None,
                        help="trials each pruned search runs with --budget (default: twice --trials)")
    args = parser.parse_args()
    if args.budget is not None and not 0 < args.budget <= 1:
        parser.error(f"--budget {args.budget}: a fraction of the unpruned epochs, in (0, 1]")
    pruned_trials = (args.budget_trials or 2 * args.trials) if args.budget is not None else args.trials
    candidates = {spec: parse_candidate(spec) for spec in (args.pruner or ["default"])}

    with tempfile.TemporaryDirectory() as tmp:
        root = args.outputs or tmp
        run_timed(hexsweep_cmd(f"data={args.preset}", "trainer.epochs=0", "strength.games=0",
                               f"paths.outputs={root}", "hydra.launcher.progress=off"))  # the dataset, once
        searches = [("none", ["hydra.sweeper.pruner.name=none"])] + list(candidates.items())
        counts = {label: args.trials if label == "none" else pruned_trials for label, _ in searches}
        jobs = {(label, seed): (study_name(label, args, seed, counts[label]), over)
                for seed in args.seeds for label, over in searches}
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            futures = {key: pool.submit(run_search, root, name, args, key[1], over, counts[key[0]])
                       for key, (name, over) in jobs.items()}
            trials = {key: f.result() for key, f in futures.items()}
    results = {key: summarise(ts) for key, ts in trials.items()}
    if args.budget is not None:  # each pruned search as if it had stopped when its epochs ran out
        results.update({(label, seed): summarise(within(ts, args.budget * results[("none", seed)]["epochs"]))
                        for (label, seed), ts in trials.items() if label != "none"})

    print(f"data={args.preset}, {args.trials} trials of {args.epochs} epochs, n_jobs={args.n_jobs}, "
          f"seeds {' '.join(map(str, args.seeds))}; targets: epochs ratio <= {EPOCHS_TARGET:.2f}, "
          f"best gap <= +{GAP_TARGET:.0f}% (minimising)")
    if args.budget is not None:
        print(f"budget: each pruned search ran {pruned_trials} trials and is scored on those within "
              f"{args.budget:.2f} x its seed's unpruned epochs")
    for seed in args.seeds:
        r = results[("none", seed)]
        print(f"unpruned seed {seed}: {r['epochs']} epochs, best {r['best']:.4f}")
    for label in candidates:
        print(f"\n{label}")
        print(f"  {'seed':>4s} {'epochs':>6s} {'ratio':>6s} {'best':>7s} {'gap %':>7s} {'trials':>6s} {'pruned':>6s} "
              f"{'failed':>6s}")
        ratios, gaps = [], []
        for seed in args.seeds:
            plain, pruned = results[("none", seed)], results[(label, seed)]
            ratio = pruned["epochs"] / plain["epochs"]
            gap = 100 * (pruned["best"] - plain["best"]) / abs(plain["best"])
            ratios.append(ratio)
            gaps.append(gap)
            print(f"  {seed:4d} {pruned['epochs']:6d} {ratio:6.2f} {pruned['best']:7.4f} {gap:+7.2f} "
                  f"{pruned['trials']:6d} {pruned['pruned']:6d} {pruned['failed']:6d}  {verdict(ratio, gap)}")
        mean_ratio, mean_gap = statistics.mean(ratios), statistics.mean(gaps)
        worst = max(range(len(args.seeds)), key=lambda i: (verdict(ratios[i], gaps[i]) == "missed",
                                                           max(ratios[i] / EPOCHS_TARGET, gaps[i] / GAP_TARGET)))
        every = all(verdict(a, g) == "met" for a, g in zip(ratios, gaps, strict=True))
        ok = every and verdict(mean_ratio, mean_gap) == "met"
        print(f"  mean      {mean_ratio:6.2f}         {mean_gap:+7.2f}")
        print(f"  worst seed {args.seeds[worst]}: ratio {ratios[worst]:.2f}, gap {gaps[worst]:+.2f}%")
        print(f"  max over seeds: ratio {max(ratios):.2f}, gap {max(gaps):+.2f}%")
        print(f"  both targets, mean and every seed: {'MET' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
