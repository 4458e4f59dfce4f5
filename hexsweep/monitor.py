"""Machine-wide resource monitor: ``python -m hexsweep.monitor --duration 10 --interval 5``.

Prints CPU and RAM use, each CUDA GPU's memory and utilisation (NVML), Apple's MPS GPU (its
chip, Metal's recommended maximum for one process; its memory is the RAM), and the running
hexsweep jobs (who holds which slot in the lock folder, with their RSS and CPU %, and on MPS
the GPU memory each job holds, from the last sample in its ``resources.jsonl``: no call tells
one process what another holds on an MPS GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import psutil

from hexsweep.devices import mps_chip_name
from hexsweep.naming import host
from hexsweep.resources import mps
from hexsweep.resources.gpus import all_gpu_status
from hexsweep.resources.slots import holder_state, read_holders


def last_sample(job_dir: str) -> dict:
    """The newest row of a job's resources.jsonl ({} if none): only the file's tail is read."""
    if not job_dir:
        return {}
    try:
        with open(Path(job_dir) / "resources.jsonl", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def snapshot(lock_dir: Path) -> str:
    vm = psutil.virtual_memory()
    lines = [f"{datetime.now():%H:%M:%S}  CPU {psutil.cpu_percent(None):5.1f}% of {psutil.cpu_count()} cores"
             f"  RAM {vm.used / 2**30:.1f}/{vm.total / 2**30:.1f} GiB ({vm.percent:.0f}%)"]
    for g in all_gpu_status():
        lines.append(f"  GPU {g.index} {g.name}: {g.memory_used_mb:.0f}/{g.memory_total_mb:.0f} MiB, "
                     f"util {g.utilization_pct:.0f}%")
    if (m := mps.status()) is not None:
        lines.append(f"  GPU mps {mps_chip_name()}: unified memory, at most {m.recommended_max_mb:.0f} MiB "
                     f"per process (Metal), {m.ram_available_mb:.0f} MiB RAM available")
    holders = read_holders(lock_dir)
    if not holders:
        lines.append(f"  no hexsweep job holds a slot in {lock_dir}")
    for h in holders:
        pid = h.get("pid")
        usage = ""
        try:
            p = psutil.Process(pid)
            usage = f"RSS {p.memory_info().rss / 2**20:.0f} MiB, CPU {p.cpu_percent(0.1):.0f}%"
        except (psutil.Error, TypeError):
            pass
        if "mps_allocated_mb" in (sample := last_sample(h.get("job_dir", ""))):
            usage += f", MPS {sample['mps_allocated_mb']:.0f} MiB"
        since = f"{time.time() - h['since']:.0f} s" if "since" in h else "?"
        lines.append(f"  slot {h.get('slot')}: pid {pid} ({holder_state(pid)}), {h.get('experiment', '?')} "
                     f"for {since}, {usage}  {h.get('job_dir', '')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.monitor", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (0: one snapshot)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between snapshots")
    parser.add_argument("--lock-dir", type=Path, default=Path("outputs/.locks") / host(),
                        help="the slot lock folder (resources.lock_dir; default: this host's)")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval {args.interval} is invalid: allowed a number > 0")
    if args.duration < 0:
        parser.error(f"--duration {args.duration} is invalid: allowed a number >= 0")
    psutil.cpu_percent(None)
    end = time.monotonic() + args.duration
    while True:
        time.sleep(min(0.5, args.interval))
        print(snapshot(args.lock_dir), flush=True)
        if time.monotonic() + args.interval > end:
            break
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
