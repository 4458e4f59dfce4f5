"""Aggregation at scale: 1,000 and 10,000 synthetic job folders, table + summary + report.

    python bench/aggregate_scale.py [--sizes 1000 10000]

Each synthetic job folder holds a realistic result.json and a 10-epoch metrics.jsonl.
Prints the time to aggregate and report each size, per job, and the growth factor (linear
growth: time ratio close to the size ratio). Target: 10,000 jobs in <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from hexsweep.report.aggregate import aggregate
from hexsweep.report.files import write_report

EXPERIMENTS = ["balanced_weights", "balanced_high_weight_decay", "policy_heavy", "policy_intermediate",
               "balanced_no_dropout", "balanced_high_lr"]


def make_jobs(root: Path, n: int) -> None:
    rng = random.Random(0)
    for i in range(n):
        job = root / str(i)
        job.mkdir(parents=True)
        exp = EXPERIMENTS[i % 6]
        rows = []
        for epoch in range(1, 11):
            v = 1.5 - 0.03 * epoch + rng.random() * 0.05
            rows.append({"epoch": epoch, "val_objective": v, "val_loss": v, "val_policy_loss": v + 0.3,
                         "val_value_loss": v - 0.3, "val_policy_acc": 0.3 + 0.02 * epoch,
                         "val_value_acc": 0.6, "train_loss": v - 0.1, "train_policy_acc": 0.35,
                         "samples_per_s": 3000.0, "lr": 1e-3})
        best = min(rows, key=lambda r: r["val_objective"])
        status = "completed" if i % 50 else "failed"
        result = {"format_version": 1, "status": status, "experiment": exp,
                  "overrides": [f"experiment={exp}", f"seed={i // 6}"],
                  "objective": {"metric": "val_objective", "direction": "minimize", "value": best["val_objective"]},
                  "best": best, "final": rows[-1], "best_epoch": best["epoch"], "epochs_run": 10,
                  "wall_time_s": 60.0, "peak_rss_mb": 400.0, "host": "bench", "pid": 1,
                  "error": None if status == "completed" else {"type": "RuntimeError", "message": "boom"},
                  "config": {"batch_size": 512, "optim": {"lr": 1e-3}, "model": {"channels": 32}}}
        (job / "result.json").write_text(json.dumps(result))
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    times, reading = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"sweep{n}"
            make_jobs(root, n)
            start = time.perf_counter()
            df = aggregate([root])
            t_table = reading[n] = time.perf_counter() - start
            write_report(df, root, [root])
            times[n] = time.perf_counter() - start
            print(f"{n:6d} jobs: {times[n]:5.2f} s in all ({t_table:.2f} s reading the folders), "
                  f"{1e3 * times[n] / n:.2f} ms/job")
    sizes = sorted(times)
    for a, b in zip(sizes, sizes[1:], strict=False):
        print(f"{a} -> {b} jobs ({b / a:.0f}x): reading the folders x{reading[b] / reading[a]:.1f}, "
              f"in all x{times[b] / times[a]:.1f} (plots and report are a fixed cost)")
    print(f"target: 10,000 jobs <= 5 s; measured {times.get(10000, float('nan')):.2f} s")


if __name__ == "__main__":
    main()
