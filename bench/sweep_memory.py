"""Memory of parallel jobs: does the dataset exist once in RAM, whatever the number of jobs?

    python bench/sweep_memory.py [--positions 300000] [--steps 60]

Generates one 13x13 dataset, then measures the peak summed PSS (proportional set size: shared
pages such as the memory-mapped dataset are split between the processes that map them, so
the sum is the group's real memory) of the job processes of
  - a sweep with 1 job, and
  - a sweep with 2 jobs in parallel,
each training `--steps` steps that touch most of the dataset's pages. With
job baseline = (1-job peak) - dataset, the target is
  2-job peak <= 1.1 x (dataset + 2 x job baseline)
(a job that copied the dataset into its own memory would need dataset twice).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import hexsweep_cmd, run_timed


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*.npy")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=300_000)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = ["data=hex13", f"data.num_positions={args.positions}", f"paths.outputs={tmp}"]
        job = [*data, "trainer.epochs=1", f"trainer.max_steps_per_epoch={args.steps}", "strength.games=0",
               "trainer.checkpoints=false", "batch_size=512", "hydra.launcher.progress=off",
               "trainer.eval_batch_size=1024"]
        wall, _, _ = run_timed(hexsweep_cmd(*data, "trainer.epochs=0", "strength.games=0"))
        dataset = folder_mb(next(p for p in (Path(tmp) / "data").glob("hex13-*") if p.is_dir()))
        print(f"dataset: {dataset:.0f} MB on disk (generated in {wall:.0f} s)")
        _, one, _ = run_timed(hexsweep_cmd("-m", "seed=0", *job, "hydra.launcher.n_jobs=1"), watch_memory=True)
        _, two, _ = run_timed(hexsweep_cmd("-m", "seed=0,1", *job, "hydra.launcher.n_jobs=2"), watch_memory=True)
    baseline = one - dataset
    target = 1.1 * (dataset + 2 * baseline)
    print(f"peak PSS, 1 job:  {one:7.0f} MB  (job baseline without the dataset: {baseline:.0f} MB)")
    print(f"peak PSS, 2 jobs: {two:7.0f} MB")
    print(f"target 1.1 x (dataset + 2 x baseline) = {target:.0f} MB; "
          f"ratio 2-job peak / (dataset + 2 x baseline) = {two / (dataset + 2 * baseline):.3f} (target <= 1.1)")
    print(f"had each job its own copy: ~{2 * dataset + 2 * baseline:.0f} MB")


if __name__ == "__main__":
    main()
