"""Tuning efficiency: a TPE search with the median pruner vs the same search without pruning.

    python bench/tuning_efficiency.py [--preset small] [--trials 12] [--epochs 6] [--n-jobs 2]

Both searches use search=hex_tpe with the same sampler seed and trial count. Printed per
search: epochs trained (the compute), the best objective reached and wall time; then the
ratios. Target: the pruned search reaches the unpruned best (within 1%) with <= 50% of
the epochs. (With parallel trials the two searches see different histories, so results
vary from run to run.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import optuna
from common import hexsweep_cmd, run_timed

from hexsweep.search.storage import open_storage


def run_search(tmp: str, name: str, args: argparse.Namespace, pruner: str) -> dict:
    cmd = hexsweep_cmd("-m", "search=hex_tpe", f"data={args.preset}", f"paths.outputs={tmp}",
                       f"hydra.sweeper.study_name={name}", f"hydra.sweeper.n_trials={args.trials}",
                       f"hydra.sweeper.n_jobs={args.n_jobs}", f"trainer.epochs={args.epochs}",
                       f"hydra.sweeper.pruner.name={pruner}", "hydra.sweeper.sampler.seed=0",
                       "trainer.patience=0", "strength.games=0", "hydra.launcher.progress=off")
    start = time.perf_counter()
    run_timed(cmd)
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=open_storage(str(Path(tmp) / "optuna/studies.journal")))
    epochs = 0
    for t in study.trials:
        result = Path(t.user_attrs["job_dir"]) / "result.json"
        epochs += json.loads(result.read_text()).get("epochs_run") or 0
    states = [t.state.name for t in study.trials]
    return {"epochs": epochs, "best": study.best_value, "wall": wall, "pruned": states.count("PRUNED"),
            "complete": states.count("COMPLETE"), "failed": states.count("FAIL")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_timed(hexsweep_cmd(f"data={args.preset}", "trainer.epochs=0", "strength.games=0", f"paths.outputs={tmp}"))
        plain = run_search(tmp, "unpruned", args, "none")
        pruned = run_search(tmp, "pruned", args, "median")
    for name, r in (("no pruning", plain), ("median pruner", pruned)):
        print(f"{name:14s}: {r['epochs']:4d} epochs, best {r['best']:.4f}, {r['complete']} complete, "
              f"{r['pruned']} pruned, {r['failed']} failed, {r['wall']:.0f} s")
    gap = (pruned["best"] - plain["best"]) / abs(plain["best"])
    print(f"epochs ratio pruned/unpruned = {pruned['epochs'] / plain['epochs']:.2f} (target <= 0.50)")
    print(f"best objective: pruned is {100 * gap:+.2f}% vs unpruned (target within +1%; minimising)")
    print(f"wall time ratio = {pruned['wall'] / plain['wall']:.2f}")


if __name__ == "__main__":
    main()
