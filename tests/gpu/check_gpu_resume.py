"""GPU check of resume (issue 14), for a machine with an NVIDIA GPU (not run in CI).

    python tests/gpu/check_gpu_resume.py [--tolerance 0.01] [--epochs 4] [--data small]
    python tests/gpu/check_gpu_resume.py --device cpu --data tiny   # the script itself, anywhere

On CPU a resumed run ends with exactly the metrics of an uninterrupted one (tests/test_resume.py).
On a GPU, kernels such as cuDNN's convolution backward are not deterministic, so this script
checks the same run within a tolerance:
  1. an uninterrupted run on ``device=cuda``;
  2. the same run, stopped by SIGTERM after its first epoch (it saves last.pt at the next
     step), then continued with ``resume=true``;
  3. both end with the same epochs, and every validation metric of every epoch within
     ``--tolerance`` (relative) of the uninterrupted run; the largest difference is printed.
Exits 0 and prints PASS, or exits 1 naming what differs.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from verdict import verdict  # tests/gpu/verdict.py: the scripts run from their folder


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data", default="small")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run this on a GPU machine")
    with tempfile.TemporaryDirectory() as tmp:
        def cmd(run: Path, *extra: str) -> list[str]:
            return [sys.executable, "-m", "hexsweep.train", f"data={args.data}", f"device={args.device}",
                    "strength.games=0", f"trainer.epochs={args.epochs}", "trainer.progress=off",
                    "fault.sleep_s_per_epoch=2", f"paths.outputs={tmp}", f"hydra.run.dir={run}", *extra]

        whole, cut = Path(tmp) / "whole", Path(tmp) / "cut"
        if (out := subprocess.run(cmd(whole), capture_output=True, text=True)).returncode != 0:
            sys.exit(f"uninterrupted run failed:\n{out.stderr[-3000:]}")
        proc = subprocess.Popen(cmd(cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while not (cut / "metrics.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 130:
            sys.exit(f"interrupted run exited {proc.returncode}, expected 130:\n{err[-3000:]}")
        if (out := subprocess.run(cmd(cut, "resume=true"), capture_output=True, text=True)).returncode != 0:
            sys.exit(f"resumed run failed:\n{out.stderr[-3000:]}")
        a, b = metrics(whole), metrics(cut)
        resumed = json.loads((cut / "result.json").read_text()).get("resumed_from_epoch")
    problems = []
    if [m["epoch"] for m in a] != [m["epoch"] for m in b]:
        problems.append(f"epochs {[m['epoch'] for m in a]} vs {[m['epoch'] for m in b]}")
    if not resumed:
        problems.append("the second run did not resume (no resumed_from_epoch)")
    worst = 0.0
    for x, y in zip(a, b, strict=False):
        for key, value in x.items():
            if key.startswith("val_") and isinstance(value, float):
                diff = abs(value - y[key]) / max(abs(value), 1e-12)
                worst = max(worst, diff)
                if diff > args.tolerance:
                    problems.append(f"epoch {x['epoch']} {key}: {value:.6g} vs {y[key]:.6g} ({diff:.2%})")
    print(f"resumed after epoch {resumed}; largest relative difference of a validation metric: {worst:.2e} "
          f"(tolerance {args.tolerance:g})")
    verdict(problems)


if __name__ == "__main__":
    main()
