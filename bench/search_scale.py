"""Cost of one trial as a study grows: 100 vs 2,000 finished trials, journal file vs SQLite.

    python bench/search_scale.py [--sizes 100 2000] [--trials 10] [--reports 10]

No training. For each storage and study size, a study is filled with that many finished
trials of ``--reports`` intermediate values each, then ``--trials`` more trials are run the
way a hexsweep search runs them:
  driver side  ask, three user attributes (driver, job folder, overrides), tell;
  job side     a fresh process's view: open the storage, load the study with a median pruner,
               reach the trial, and per epoch report + should_prune (``--reports`` epochs), as
               hexsweep/search/pruning.py does in every job.
Prints the per-trial seconds of both sides and the ratio of the largest to the smallest size
(target: <= 2x at 2,000 vs 100 trials).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution

from hexsweep.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
SPACE = {"x": FloatDistribution(0.0, 1.0)}


def fill(spec: str, n: int, reports: int) -> None:
    """``n`` finished trials, built in memory and copied in (as fast as the storage takes them)."""
    memory = optuna.create_study(study_name="scale")
    for i in range(n):
        t = memory.ask(SPACE)
        for step in range(reports):
            t.report(t.params["x"] + 1.0 / (step + 1), step)
        memory.tell(t, t.params["x"] + (i % 7) * 0.01)
    optuna.copy_study(from_study_name="scale", from_storage=memory._storage, to_storage=open_storage(spec))


def driver_side(study: optuna.Study, k: int) -> float:
    start = time.perf_counter()
    for i in range(k):
        t = study.ask(SPACE)
        t.set_user_attr("driver", {"host": "h", "pid": 1, "sweep_dir": "/s"})
        t.set_user_attr("job_dir", f"/s/{t.number}")
        t.set_user_attr("overrides", [f"x={t.params['x']}"])
        study.tell(t, t.params["x"] + i * 1e-3)
    return (time.perf_counter() - start) / k


def job_side(spec: str, study: optuna.Study, k: int, reports: int) -> float:
    numbers = []
    for _ in range(k):
        numbers.append(study.ask(SPACE).number)
    start = time.perf_counter()
    for number in numbers:
        storage = open_storage(spec)  # each job opens the study anew
        job_study = optuna.load_study(study_name="scale", storage=storage,
                                      pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
        study_id = storage.get_study_id_from_name("scale")
        trial = optuna.trial.Trial(job_study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
        for step in range(reports):
            trial.report(0.5 + 1.0 / (step + 1), step)
            if trial.should_prune():
                break
    elapsed = (time.perf_counter() - start) / k
    for number in numbers:
        study.tell(number, 0.5)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--reports", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("journal", "sqlite"):
            per = {}
            for n in args.sizes:
                path = Path(tmp) / f"{kind}-{n}"
                spec = f"{path}.journal" if kind == "journal" else f"sqlite:///{path}.db"
                fill(spec, n, args.reports)
                study = optuna.load_study(study_name="scale", storage=open_storage(spec))
                per[n] = (driver_side(study, args.trials), job_side(spec, study, args.trials, args.reports))
                print(f"{kind:8s} {n:5d} trials in the study: driver {per[n][0] * 1000:7.1f} ms/trial, "
                      f"job {per[n][1] * 1000:7.1f} ms/trial", flush=True)
            small, large = min(args.sizes), max(args.sizes)
            print(f"{kind:8s} ratio {large} / {small}: driver {per[large][0] / per[small][0]:.2f}x, "
                  f"job {per[large][1] / per[small][1]:.2f}x (target <= 2x)", flush=True)


if __name__ == "__main__":
    main()
