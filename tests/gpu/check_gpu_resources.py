"""GPU check of the resource assignment's CUDA half, for a machine with NVIDIA GPUs (not run in CI).

    python tests/gpu/check_gpu_resources.py [--jobs 3]

In one run, on real hardware (tests/test_mps.py and tests/test_resources.py fake the rest):
  - slots and n_jobs: resources/assign.py sees the GPUs through NVML without initialising CUDA
    in this process (the sweep driver's role); n_jobs defaults to GPUs x slots_per_gpu; slots are
    named ``gpu-<uuid prefix>-<k>``;
  - a real sweep with no n_jobs given starts that many jobs at once, and each job held a GPU
    slot, trained on its ``cuda:<i>`` and recorded its peak GPU memory;
  - admission: a job that needs more GPU memory than is free (another process holds most of it)
    waits, and starts once that process frees it;
  - out-of-memory classification: a real ``torch.OutOfMemoryError`` is ``oom`` for the job's
    record and for the trackers, and a plain RuntimeError is not.
Exits 0 and prints PASS, or exits 1 naming what failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from verdict import verdict  # tests/gpu/verdict.py: the scripts run from their folder

HOLDER = """
import sys, time, torch
held = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda:0")
torch.cuda.synchronize()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""

OOM = """
import torch
from hexsweep.devices import is_oom
from hexsweep.tracking import End
from hexsweep.lifecycle import classify_failure
total = torch.cuda.get_device_properties(0).total_memory
try:
    torch.empty(2 * total, dtype=torch.uint8, device="cuda:0")
    print("no error")
except Exception as e:
    print(type(e).__name__, is_oom(e), classify_failure(e), End(None, e).status)
plain = RuntimeError("CUDA error: an illegal memory access was encountered")
print("plain", is_oom(plain), classify_failure(plain))
"""


def check_slots(problems: list[str], gpus: int) -> None:
    import torch

    from hexsweep.resources import assign

    kind, indices = assign.gpu_backend("auto")
    if (kind, indices) != ("gpu", list(range(gpus))):
        problems.append(f"gpu_backend('auto') = {(kind, indices)}, expected {gpus} CUDA GPU(s)")
    for per_gpu, expected in ((None, gpus), (2, 2 * gpus)):
        if (n := assign.default_parallel("auto", per_gpu, 100)) != expected:
            problems.append(f"default n_jobs with slots_per_gpu={per_gpu}: {n}, expected {expected}")
    with tempfile.TemporaryDirectory() as tmp:
        pool = assign.make_pool("auto", tmp, 2, None, 4)
        held = [pool.try_acquire() for _ in range(2 * gpus)]
        names = [s.name for s in held if s is not None]
        if len(names) != 2 * gpus or not all(n.startswith("gpu-") for n in names) or pool.try_acquire():
            problems.append(f"slots of a 2-per-GPU pool: {names}")
        for s in held:
            if s is not None:
                s.release()
    if torch.cuda.is_initialized():
        problems.append("sizing the sweep initialised CUDA in the driver's process")
    print(f"slots: {names}; default n_jobs {gpus} (x2 with slots_per_gpu=2)")


def check_sweep(problems: list[str], gpus: int, jobs: int, tmp: str) -> None:
    seeds = ",".join(str(i) for i in range(jobs))
    cmd = [sys.executable, "-m", "hexsweep.train", "-m", f"seed={seeds}", "debug=tiny", "trainer.epochs=1",
           "slots_per_gpu=2", f"paths.outputs={tmp}", "hydra.launcher.progress=off"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"sweep failed ({out.returncode}): {out.stderr[-2000:]}")
        return
    expected = min(jobs, 2 * gpus)
    if f"{jobs} jobs, {expected} at once" not in out.stdout + out.stderr:
        problems.append(f"the sweep did not start {expected} jobs at once by default")
    sweep = next((Path(tmp) / "multirun").glob("*/*"))
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        r = json.loads((job / "result.json").read_text())
        slot, device = r.get("slot") or "", r.get("device") or ""
        if not (slot.startswith("gpu-") and device.startswith("cuda:") and r.get("status") == "completed"):
            problems.append(f"job {job.name}: {r.get('status')} on slot {slot!r}, device {device!r}")
        if not r.get("peak_gpu_mem_mb"):
            problems.append(f"job {job.name}: no peak GPU memory recorded")
        print(f"job {job.name}: {slot} {device} threads {r.get('num_threads')} peak {r.get('peak_gpu_mem_mb')} MB")


def check_admission(problems: list[str]) -> None:
    from hexsweep.resources import admission
    from hexsweep.resources.gpus import gpu_status

    free0 = gpu_status(0).memory_free_mb
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(int(free0 * 0.8 * 2**20)), "8"],
                              stdout=subprocess.PIPE, text=True)
    try:
        if holder.stdout.readline().strip() != "held":
            problems.append("the memory holder did not start")
            return
        need = admission.Need(ram_mb=None, gpu_mem_mb=free0 * 0.5, source="configured")
        why = admission.shortfall(need, 0)
        if why is None or "on GPU 0" not in why:
            problems.append(f"admission did not see the held memory: {why!r}")
        waited = admission.wait_for_memory(need, 0, timeout_s=180, poll_s=0.5)
        print(f"admission: {why}; admitted once the holder freed it ({waited:.1f} s)")
    except admission.AdmissionTimeout as e:
        problems.append(f"admission never admitted the job: {e}")
    finally:
        holder.wait(timeout=60)


def check_oom(problems: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", OOM], capture_output=True, text=True)
    lines = out.stdout.split("\n") + ["", ""]
    if out.returncode != 0 or lines[0] != "OutOfMemoryError True oom oom" or lines[1] != "plain False failed":
        problems.append(f"out-of-memory classification: {out.stdout!r} {out.stderr[-1000:]}")
    print(f"out of memory: {lines[0]!r}; a plain RuntimeError: {lines[1]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    from hexsweep.resources.gpus import gpu_count

    gpus = gpu_count()
    if gpus == 0:
        sys.exit("no GPU visible to NVML: run this on a GPU machine")
    problems: list[str] = []
    start = time.monotonic()
    check_slots(problems, gpus)
    with tempfile.TemporaryDirectory() as tmp:
        check_sweep(problems, gpus, args.jobs, tmp)
    check_admission(problems)
    check_oom(problems)
    print(f"{gpus} GPU(s), {args.jobs} jobs, {time.monotonic() - start:.0f} s")
    verdict(problems)


if __name__ == "__main__":
    main()
