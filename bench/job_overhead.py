"""Per-job overhead: no-op jobs through hexsweep vs a bare Hydra joblib multirun of a no-op function.

    python bench/job_overhead.py [--small 8] [--large 24] [--repeats 2]

hexsweep: ``trainer.epochs=0 strength.games=0`` jobs (each still composes its config, takes a
slot, maps the dataset, builds the model, evaluates it once and writes its job folder), plus
the post-sweep aggregation and report. Bare Hydra: ``bench/noop_app.py`` through
``hydra/launcher=joblib``. Launcher only: the same bare app through ``hydra/launcher=hexsweep``
(the runner's own cost, with none of hexsweep.train's work). All with n_jobs=2.

Each side runs a small and a large sweep (best of --repeats); the slope between them is the
per-job overhead, the intercept the fixed start-up cost (hexsweep imports torch and
matplotlib; the bare app imports neither). Target: hexsweep's per-job overhead <= bare Hydra's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import hexsweep_cmd, run_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=8)
    parser.add_argument("--large", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    noop_app = str(Path(__file__).with_name("noop_app.py"))
    results: dict[str, dict[int, float]] = {"hexsweep": {}, "bare": {}, "launcher": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run_timed(hexsweep_cmd("debug=tiny", "trainer.epochs=0", "strength.games=0", f"paths.outputs={tmp}"))
        for n in (args.small, args.large):
            seeds = ",".join(str(i) for i in range(n))
            ours = hexsweep_cmd("-m", f"seed={seeds}", "debug=tiny", "trainer.epochs=0", "strength.games=0",
                                f"paths.outputs={tmp}", "hydra.launcher.n_jobs=2", "hydra.launcher.progress=off")
            bare = [sys.executable, noop_app, "-m", f"+seed={seeds}", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp}/bare"]
            launcher = [sys.executable, noop_app, "-m", f"+seed={seeds}", "hydra/launcher=hexsweep",
                        "hydra.launcher.n_jobs=2", "hydra.launcher.progress=off", f"hydra.sweep.dir={tmp}/launcher-{n}"]
            results["hexsweep"][n] = min(run_timed(ours)[0] for _ in range(args.repeats))
            results["bare"][n] = min(run_timed(bare, cwd=tmp)[0] for _ in range(args.repeats))
            results["launcher"][n] = min(run_timed(launcher, cwd=tmp)[0] for _ in range(args.repeats))
    slope, fixed = {}, {}
    for name, times in results.items():
        slope[name] = (times[args.large] - times[args.small]) / (args.large - args.small)
        fixed[name] = times[args.small] - slope[name] * args.small
        print(f"{name:9s} {args.small} jobs {times[args.small]:6.2f} s, {args.large} jobs {times[args.large]:6.2f} s"
              f" -> per job {slope[name]:.3f} s, fixed start-up {fixed[name]:.2f} s")
    print(f"per-job overhead ratio hexsweep / bare Hydra = {slope['hexsweep'] / slope['bare']:.2f} (target <= 1.0)")
    print(f"per-job overhead ratio hexsweep launcher / joblib, same bare app = "
          f"{slope['launcher'] / slope['bare']:.2f}")
    bare = results["bare"]
    for name in ("hexsweep", "launcher"):
        ours = results[name]
        print(f"whole-sweep ratio {name} / bare Hydra at {args.small} jobs = {ours[args.small] / bare[args.small]:.2f}"
              f" (target <= 1.5), at {args.large} jobs = {ours[args.large] / bare[args.large]:.2f}")


if __name__ == "__main__":
    main()
