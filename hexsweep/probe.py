"""Batch-size probe and packing: ``python -m hexsweep.probe model=resnet18 data=hex13``.

    python -m hexsweep.probe model=resnet18 data=hex13                              # 128..8192, doubling
    python -m hexsweep.probe model=resnet18 data=hex13 probe.batch_sizes=[512,1024,2048]
    python -m hexsweep.probe model=resnet18 data=hex13 probe.parallel=[1,2,3]       # k jobs on one device

For each batch size: ``probe.warmup_steps`` untimed then ``probe.steps`` timed training steps
of the real model on the real data; samples/s, step time and peak memory (CUDA: torch's
peak allocation; MPS: the most the process held on the GPU, ``driver_allocated_memory``; CPU:
peak RSS). The first out-of-memory error (CUDA's or MPS's) is caught, freed and reported as the
limit. For each k in ``probe.parallel``: k training processes at once on the same device, each
holding a slot of a k-slot pool as a sweep's jobs do (resources/assign.py: on MPS each caps
its share of the GPU's memory at 1/k); their
total samples/s and the speedup over k=1. Writes ``probe.csv``, ``probe.json`` (read by
memory admission), ``probe.png`` and prints the overrides to use.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
import torch.nn.functional as F

from hexsweep import faults
from hexsweep.atomic import atomic_write, atomic_write_json
from hexsweep.cli import compose_from_argv, run_cli
from hexsweep.config import validate
from hexsweep.data.dataset import HexDataset
from hexsweep.data.generate import ensure_dataset
from hexsweep.devices import free_cached, is_oom, resolve_device
from hexsweep.hex.encoding import encode_batch, legal_mask
from hexsweep.model import HexNet, NetConfig
from hexsweep.resources.admission import job_signature
from hexsweep.resources.assign import Want, assign

PROBE_LATEST = "probe/latest.json"


def check(cfg: Any) -> None:
    """The probe's keys (non-empty lists of positive batch sizes, steps) are range-checked by
    ``config.validate`` with the rest of the schema; run() checks again for configs built by hand."""
    validate(cfg)


def _batch(data: HexDataset, size: int, rng: np.random.Generator, device: torch.device) -> dict:
    rows = data.gather(rng.integers(0, len(data), size))
    boards = torch.from_numpy(rows["boards"]).to(device)
    to_move = torch.from_numpy(rows["to_move"]).to(device)
    return {"planes": encode_batch(boards, to_move), "legal": legal_mask(boards),
            "move": torch.from_numpy(rows["move"].astype(np.int64)).clamp(min=0).to(device),
            "value": torch.from_numpy(rows["value"].astype(np.float32)).to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(cfg: Any, data: HexDataset, device: torch.device, batch_size: int) -> dict[str, Any]:
    """Warm-up then timed steps at one batch size; OOM is caught and freed."""
    row: dict[str, Any] = {"batch_size": batch_size, "status": "ok"}
    model = optimizer = batch = None
    proc = psutil.Process()
    try:
        with_faults = cfg.copy()
        with_faults.batch_size = batch_size
        faults.check_batch_size(with_faults)  # fault.oom_above_batch_size: a fake memory limit for tests
        torch.manual_seed(cfg.seed)
        model = HexNet(NetConfig.from_config(cfg.model, data.board_size)).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        rng = np.random.default_rng(cfg.seed)
        batch = _batch(data, batch_size, rng, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_peak = proc.memory_info().rss
        mps_peak = 0
        for step in range(cfg.probe.warmup_steps + cfg.probe.steps):
            if step == cfg.probe.warmup_steps:
                _sync(device)
                start = time.perf_counter()
            logits, value = model(batch["planes"], batch["legal"])
            loss = F.cross_entropy(logits, batch["move"]) + F.mse_loss(value, batch["value"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rss_peak = max(rss_peak, proc.memory_info().rss)
            if device.type == "mps":  # no peak counter on MPS: what the process holds, after each step
                mps_peak = max(mps_peak, torch.mps.driver_allocated_memory())
        _sync(device)
        elapsed = time.perf_counter() - start
        peak = {"cuda": lambda: torch.cuda.max_memory_allocated(device), "mps": lambda: mps_peak}.get(
            device.type, lambda: rss_peak)()
        row.update(samples_per_s=cfg.probe.steps * batch_size / elapsed,
                   step_ms=1000 * elapsed / cfg.probe.steps, peak_mem_mb=peak / 2**20)
    except RuntimeError as e:  # torch.OutOfMemoryError is one; MPS's is a plain RuntimeError
        if not is_oom(e):
            raise
        row.update(status="oom", error=str(e).splitlines()[0][:200])
    finally:
        del model, optimizer, batch
        gc.collect()
        free_cached()
    return row


def _parallel_worker(cfg: Any, folder: str, want: Want, batch_size: int, queue: Any) -> None:
    with assign(want) as res:  # its slot, device, threads and (MPS) memory share, as in a sweep
        data = HexDataset(folder, "train")
        queue.put(measure(cfg, data, torch.device(res.device), batch_size) | {"slot": res.slot.name})


def packing(cfg: Any, folder: Path, device: torch.device, batch_size: int, k: int) -> dict[str, Any]:
    """k processes at once on one device, each holding one slot of a k-slot pool."""
    want = Want(device=str(device), lock_dir=Path(cfg.resources.lock_dir).resolve() / f"probe-{k}",
                slots_per_gpu=k, cpu_slots=k, parallel=k, wait_timeout_s=600)
    ctx = multiprocessing.get_context("spawn")  # fresh processes: each makes its own CUDA context
    queue = ctx.Queue()
    procs = [ctx.Process(target=_parallel_worker, args=(cfg, str(folder), want, batch_size, queue))
             for _ in range(k)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    rows = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    ok = [r for r in rows if r["status"] == "ok"]
    return {"k": k, "batch_size": batch_size, "status": "ok" if len(ok) == k else "oom",
            "total_samples_per_s": sum(r["samples_per_s"] for r in ok) if len(ok) == k else float("nan"),
            "peak_mem_mb_per_job": max((r["peak_mem_mb"] for r in ok), default=float("nan")),
            "slots": ",".join(sorted(r.get("slot", "?") for r in rows)), "wall_s": time.perf_counter() - start}


def plot(batches: pd.DataFrame, packs: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ok = batches[batches["status"] == "ok"]
    ax = axes[0]
    ax.plot(ok["batch_size"], ok["samples_per_s"], "o-", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples/s", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(ok["batch_size"], ok["peak_mem_mb"], "s--", color="tab:red")
    ax2.set_ylabel("peak memory (MB)", color="tab:red")
    for bs in batches.loc[batches["status"] == "oom", "batch_size"]:
        ax.axvline(bs, color="k", ls=":", lw=1)
        ax.text(bs, ax.get_ylim()[1] * 0.95, " OOM", fontsize=8)
    ax.set_title("throughput and memory vs batch size")
    ax = axes[1]
    if not packs.empty:
        ax.bar(packs["k"].astype(str), packs["total_samples_per_s"], color="tab:green")
        ax.set_xlabel("jobs at once on one device (k)")
        ax.set_ylabel("total samples/s")
        ax.set_title(f"packing at batch size {int(packs['batch_size'].iloc[0])}")
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    plt.close(fig)


def recommend(batches: pd.DataFrame, packs: pd.DataFrame, device: torch.device) -> str:
    ok = batches[batches["status"] == "ok"]
    if ok.empty:
        return "no batch size fit: try smaller probe.batch_sizes or a smaller model"
    best = ok.loc[ok["samples_per_s"].idxmax()]
    # the smallest batch size within 5% of the best throughput: same speed, smaller batches train better
    near = ok[ok["samples_per_s"] >= 0.95 * best["samples_per_s"]].sort_values("batch_size").iloc[0]
    text = f"batch_size={int(near['batch_size'])}"
    good = packs[(packs["status"] == "ok")] if not packs.empty else packs
    if not good.empty and len(good) > 1:
        base = good.loc[good["k"] == good["k"].min(), "total_samples_per_s"].iloc[0]
        k = int(good.loc[good["total_samples_per_s"].idxmax(), "k"])
        if good.loc[good["k"] == k, "total_samples_per_s"].iloc[0] > 1.1 * base:
            text += f" slots_per_gpu={k}" if device.type in ("cuda", "mps") else f" hydra.launcher.n_jobs={k}"
    return text


def run(cfg: Any) -> None:
    check(cfg)
    # the probe alone on the machine: no slot, all the cores unless num_threads says otherwise
    with assign(Want(device=str(cfg.device), slots="off", parallel=None, num_threads=cfg.num_threads)):
        _probe(cfg)


def _probe(cfg: Any) -> None:
    device = resolve_device(cfg.device)
    folder, _ = ensure_dataset(cfg.data, cfg.paths.data, progress=True)
    data = HexDataset(folder, "train", cfg.data.board_size)
    out = Path(cfg.probe.out or Path(cfg.paths.outputs) / "probe" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"probing {cfg.model.name} on {cfg.data.name} ({cfg.data.board_size}x{cfg.data.board_size}) on {device}")
    rows = []
    for bs in sorted(cfg.probe.batch_sizes):
        row = measure(cfg, data, device, bs)
        rows.append(row)
        if row["status"] == "oom":
            print(f"  batch {bs:6d}: out of memory -> the limit is below {bs}")
            break
        print(f"  batch {bs:6d}: {row['samples_per_s']:9.0f} samples/s, {row['step_ms']:7.1f} ms/step, "
              f"peak {row['peak_mem_mb']:8.0f} MB")
    batches = pd.DataFrame(rows)
    ok = batches[batches["status"] == "ok"]
    packs = pd.DataFrame()
    if not ok.empty and list(cfg.probe.parallel) != [1]:
        bs = cfg.probe.parallel_batch_size or int(ok.loc[ok["samples_per_s"].idxmax(), "batch_size"])
        packs = pd.DataFrame([packing(cfg, folder, device, bs, k) for k in sorted(cfg.probe.parallel)])
        base = packs["total_samples_per_s"].iloc[0]
        packs["speedup"] = packs["total_samples_per_s"] / base
        for r in packs.itertuples():
            print(f"  k={r.k}: {r.total_samples_per_s:9.0f} samples/s in total ({r.speedup:.2f}x the first k), "
                  f"peak {r.peak_mem_mb_per_job:.0f} MB per job, slots {r.slots}")
    table = pd.concat([batches.assign(kind="batch_size"), packs.assign(kind="parallel")], ignore_index=True)
    atomic_write(out / "probe.csv", lambda f: table.to_csv(f, index=False))
    advice = recommend(batches, packs, device)
    record = {"device": str(device), "model": cfg.model.name, "data": cfg.data.name,
              "signature": {k: v for k, v in job_signature(cfg).items() if k != "batch_size"},
              "batch_sizes": rows, "parallel": packs.to_dict("records"), "recommendation": advice}
    atomic_write_json(out / "probe.json", record)
    atomic_write_json(Path(cfg.paths.outputs) / PROBE_LATEST, record)
    plot(batches, packs, out / "probe.png")
    print(f"\nrecommended overrides: {advice}\nwritten: {out / 'probe.csv'}, {out / 'probe.png'}, {out / 'probe.json'}")


def main() -> None:
    cfg = compose_from_argv("hexsweep.probe")
    run_cli(lambda: run(cfg))


if __name__ == "__main__":
    sys.exit(main())
