"""Sweep speedup: 8 CPU jobs of ~10 s each, two at once vs one after another.

    python bench/sweep_speedup.py [--jobs 8] [--epochs 8]

Runs, in one session and on the same data:
  sequential   hexsweep launcher, n_jobs=1 (the job gets all cores)
  hexsweep     hexsweep launcher, n_jobs=2 (slots split the cores: 1 thread each on 2 cores)
  stock joblib Hydra's joblib launcher, n_jobs=2, no thread division (each job takes all cores)
and prints the speedups over sequential (target for hexsweep: >= 1.8x on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile

from common import hexsweep_cmd, run_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=24, help="tiny epochs per job (~0.4 s each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = ",".join(str(i) for i in range(args.jobs))
        job = ["-m", f"seed={seeds}", "debug=tiny", f"trainer.epochs={args.epochs}", "trainer.patience=0",
               "strength.games=0", "trainer.checkpoints=false", f"paths.outputs={tmp}"]
        run_timed(hexsweep_cmd("debug=tiny", "trainer.epochs=0", "strength.games=0", f"paths.outputs={tmp}"))
        runs = {
            "sequential (hexsweep, n_jobs=1)": job + ["hydra.launcher.n_jobs=1", "hydra.launcher.progress=off"],
            "hexsweep (n_jobs=2, threads divided)": job + ["hydra.launcher.n_jobs=2", "hydra.launcher.progress=off"],
            "stock joblib (n_jobs=2, no thread division)": job + [
                "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "resources.slots=off", "num_threads=2"],
        }
        walls = {}
        for name, cmd in runs.items():
            walls[name], _, _ = run_timed(hexsweep_cmd(*cmd))
            print(f"{name:45s} {walls[name]:6.1f} s")
        base = walls["sequential (hexsweep, n_jobs=1)"]
        per_job = base / args.jobs
        print(f"\n{args.jobs} jobs, ~{per_job:.1f} s each in the sequential run (start-up included)")
        for name, wall in walls.items():
            print(f"speedup {name:45s} {base / wall:.2f}x")
        print("target: hexsweep >= 1.8x")


if __name__ == "__main__":
    main()
