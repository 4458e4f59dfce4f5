"""Job start cost: the per-job wall time of sequential no-op jobs (n_jobs=1), as the slope between
a small and a large sweep, for the code in this tree and, with --baseline, for another checkout
(e.g. a `git worktree` of an older commit, run from its own folder so its packages are imported).

    python bench/job_start.py [--small 4] [--large 12] [--repeats 2] [--baseline /path/to/old/checkout]

Two kinds of job: hexsweep.train with ``trainer.epochs=0 strength.games=0`` (the job still
composes, takes a slot, maps the dataset, builds and evaluates the model once, writes its
folder), and, for this tree only, a plain no-op Hydra app (``bench/noop_app.py``) through
``hydra/launcher=hexsweep``. The slope is what one more job costs: process start, Hydra's
run_job and the job itself; the intercept is the fixed start-up (imports, job server, report).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import run_timed

HERE = Path(__file__).resolve().parent.parent


def train_cmd(n: int, outputs: str) -> list[str]:
    seeds = ",".join(str(i) for i in range(n))
    return [sys.executable, "-m", "hexsweep.train", "-m", f"seed={seeds}", "debug=tiny", "trainer.epochs=0",
            "strength.games=0", f"paths.outputs={outputs}", "hydra.launcher.n_jobs=1", "hydra.launcher.progress=off"]


def slope(times: dict[int, float], small: int, large: int) -> tuple[float, float]:
    per_job = (times[large] - times[small]) / (large - small)
    return per_job, times[small] - per_job * small


def measure(cmd_for, small: int, large: int, repeats: int, cwd: str) -> dict[int, float]:
    return {n: min(run_timed(cmd_for(n), cwd=cwd)[0] for _ in range(repeats)) for n in (small, large)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4)
    parser.add_argument("--large", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to compare with")
    args = parser.parse_args()
    noop_app = str(HERE / "bench" / "noop_app.py")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/data"
        run_timed([sys.executable, "-m", "hexsweep.train", "debug=tiny", "trainer.epochs=0", "strength.games=0",
                   f"paths.outputs={tmp}/warm", f"paths.data={data}"], cwd=str(HERE))

        def ours(n: int, tree: Path) -> list[str]:
            return train_cmd(n, f"{tmp}/{tree.name}-{n}") + [f"paths.data={data}"]

        rows["hexsweep.train, this tree"] = measure(lambda n: ours(n, HERE), args.small, args.large, args.repeats,
                                                    str(HERE))
        if args.baseline:
            rows[f"hexsweep.train, {args.baseline}"] = measure(lambda n: ours(n, args.baseline), args.small,
                                                              args.large, args.repeats, str(args.baseline))

        def plain(n: int) -> list[str]:
            return [sys.executable, noop_app, "-m", "+seed=" + ",".join(str(i) for i in range(n)),
                    "hydra/launcher=hexsweep", "hydra.launcher.n_jobs=1", "hydra.launcher.progress=off",
                    f"hydra.sweep.dir={tmp}/plain-{n}"]

        rows["plain no-op app, this tree"] = measure(plain, args.small, args.large, args.repeats, tmp)
    results = {}
    for name, times in rows.items():
        per_job, fixed = slope(times, args.small, args.large)
        results[name] = per_job
        print(f"{name:60s} per job {per_job:.3f} s, fixed start-up {fixed:.2f} s "
              f"({args.small} jobs {times[args.small]:.2f} s, {args.large} jobs {times[args.large]:.2f} s)")
    if args.baseline:
        new, old = results["hexsweep.train, this tree"], results[f"hexsweep.train, {args.baseline}"]
        print(f"per-job start ratio this tree / baseline = {new / old:.2f}")


if __name__ == "__main__":
    main()
