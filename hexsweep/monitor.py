"""Machine-wide resource monitor: ``python -m hexsweep.monitor --duration 10 --interval 5``.

Prints CPU and RAM use, each GPU's memory and utilisation (NVML), and the running hexsweep
jobs (who holds which slot in the lock folder, with their RSS and CPU %).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import psutil

from hexsweep.naming import host
from hexsweep.resources.gpus import all_gpu_status
from hexsweep.resources.slots import holder_state, read_holders


def snapshot(lock_dir: Path) -> str:
    vm = psutil.virtual_memory()
    lines = [f"{datetime.now():%H:%M:%S}  CPU {psutil.cpu_percent(None):5.1f}% of {psutil.cpu_count()} cores"
             f"  RAM {vm.used / 2**30:.1f}/{vm.total / 2**30:.1f} GiB ({vm.percent:.0f}%)"]
    for g in all_gpu_status():
        lines.append(f"  GPU {g.index} {g.name}: {g.memory_used_mb:.0f}/{g.memory_total_mb:.0f} MiB, "
                     f"util {g.utilization_pct:.0f}%")
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
