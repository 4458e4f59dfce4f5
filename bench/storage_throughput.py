"""Optuna storage under concurrent writers: trials/s for 1..N processes, journal file vs SQLite (vs PostgreSQL).

    python bench/storage_throughput.py [--writers 1 2 4 8] [--trials 40] [--reports 5] [--postgres URL]

Each writer process asks, reports ``--reports`` intermediate values and tells ``--trials``
trials into one shared study, like sweep drivers and pruning jobs do. Prints trials/s and
lock errors per storage and writer count. Used for docs/scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import tempfile
import time
from pathlib import Path

import optuna

from hexsweep.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)


def writer(args: tuple[str, int, int]) -> int:
    spec, trials, reports = args
    errors = 0
    study = optuna.load_study(study_name="bench", storage=open_storage(spec))
    for _ in range(trials):
        try:
            t = study.ask()
            x = t.suggest_float("x", -1, 1)
            for step in range(reports):
                t.report(x * step, step)
            study.tell(t, x * x)
        except Exception:  # "database is locked" and the like: counted, not fatal
            errors += 1
    return errors


def measure(spec: str, writers: int, trials: int, reports: int) -> tuple[float, int]:
    optuna.create_study(study_name="bench", storage=open_storage(spec))
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        errors = sum(pool.map(writer, [(spec, trials, reports)] * writers))
    return writers * trials / (time.perf_counter() - start), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--reports", type=int, default=5)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL to include (a fresh database)")
    args = parser.parse_args()
    print(f"{'storage':10s} {'writers':>7s} {'trials/s':>9s} {'errors':>6s}")
    for n in args.writers:
        with tempfile.TemporaryDirectory() as tmp:
            specs = {"journal": str(Path(tmp) / "s.journal"), "sqlite": f"sqlite:///{tmp}/s.db"}
            if args.postgres:
                specs["postgres"] = args.postgres
            for name, spec in specs.items():
                if name == "postgres":
                    with contextlib.suppress(KeyError):
                        optuna.delete_study(study_name="bench", storage=open_storage(spec))
                rate, errors = measure(spec, n, args.trials, args.reports)
                print(f"{name:10s} {n:7d} {rate:9.1f} {errors:6d}")


if __name__ == "__main__":
    main()
