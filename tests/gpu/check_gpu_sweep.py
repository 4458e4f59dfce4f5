"""GPU check of the slot machinery, for a machine with NVIDIA GPUs (not run in CI).

    python tests/gpu/check_gpu_sweep.py [--slots-per-gpu 2] [--jobs 6]

Runs a real sweep with ``device=auto`` and checks, from the job folders:
  - every job held a GPU slot (``gpu-<uuid prefix>-<k>``) and trained on ``cuda:<i>``;
  - one GPU's slots always mean the same device, no two jobs held the same slot at the same
    time, and at most slots_per_gpu jobs shared a device at once;
  - peak GPU memory (torch) and the GPU's used memory (NVML) were recorded;
  - the sweep report lists every job as completed.
Exits 0 and prints PASS, or exits 1 naming what failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from verdict import verdict  # tests/gpu/verdict.py: the scripts run from their folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots-per-gpu", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=6)
    args = parser.parse_args()
    from hexsweep.resources.gpus import gpu_count

    gpus = gpu_count()
    if gpus == 0:
        sys.exit("no GPU visible to NVML: run this on a GPU machine")
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        seeds = ",".join(str(i) for i in range(args.jobs))
        cmd = [sys.executable, "-m", "hexsweep.train", "-m", f"seed={seeds}", "data=small", "trainer.epochs=3",
               "strength.games=4", f"slots_per_gpu={args.slots_per_gpu}", f"paths.outputs={tmp}",
               "resources.sample_interval_s=0.5"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"sweep failed ({out.returncode}):\n{out.stderr[-3000:]}")
        sweep = next((Path(tmp) / "multirun").glob("*/*"))
        spans = []
        devices: dict[str, str] = {}
        for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
            r = json.loads((job / "result.json").read_text())
            slot, device = r.get("slot") or "", r.get("device") or ""
            if not (slot.startswith("gpu") and device.startswith("cuda:")):
                problems.append(f"job {job.name}: slot {slot!r} but device {device!r}")
            gpu_of_slot = slot.rsplit("-", 1)[0]
            if devices.setdefault(gpu_of_slot, device) != device:
                problems.append(f"slots of {gpu_of_slot} used both {devices[gpu_of_slot]} and {device}")
            if not r.get("peak_gpu_mem_mb"):
                problems.append(f"job {job.name}: no peak GPU memory recorded")
            if r.get("peak_gpu_used_mb") is None:
                problems.append(f"job {job.name}: no NVML sample recorded")
            start = r["slot_acquired_at"]
            end = datetime.fromisoformat(r["finished_at"]).timestamp()
            spans.append((slot, device, start, end))
            print(f"job {job.name}: {slot} {device} peak {r.get('peak_gpu_mem_mb'):.0f} MB (torch), "
                  f"{r.get('peak_gpu_used_mb') or 0:.0f} MB used on the GPU, {r.get('wall_time_s'):.1f} s")
        for i, (slot_a, _, s_a, e_a) in enumerate(spans):
            for slot_b, _, s_b, e_b in spans[i + 1:]:
                if slot_a == slot_b and s_a < e_b and s_b < e_a:
                    problems.append(f"slot {slot_a} held by two jobs at once")
        for _, device_a, s_a, _ in spans:  # jobs on device_a running at the moment one started
            sharing = sum(1 for _, d, s, e in spans if d == device_a and s <= s_a < e)
            if sharing > args.slots_per_gpu:
                problems.append(f"{sharing} jobs on {device_a} at once (slots_per_gpu={args.slots_per_gpu})")
        summary = json.loads((sweep / "summary.json").read_text())
        if summary["by_status"] != {"completed": args.jobs}:
            problems.append(f"statuses {summary['by_status']}")
    print(f"{gpus} GPU(s), slots_per_gpu={args.slots_per_gpu}, {args.jobs} jobs")
    verdict(problems)


if __name__ == "__main__":
    main()
