"""Training throughput: the hexsweep loop vs a minimal hand-written torch loop.

hexsweep: ``hexsweep.trainer.train`` as a job runs it, with batches gathered from the
memory-mapped dataset, augmentation, metrics and a progress bar.
baseline: the same model, batch size and loss on tensors already in memory (planes,
masks and targets precomputed), nothing else. Both run the same number of optimiser
steps, interleaved over several rounds; the medians are compared.

    python bench/train_throughput.py [--preset small] [--steps 30] [--rounds 3] [key=value ...]

Prints samples/s of both and the ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import open_dict

from hexsweep.cli import compose
from hexsweep.data.dataset import HexDataset
from hexsweep.data.generate import ensure_dataset
from hexsweep.devices import resolve_device, usable_cores
from hexsweep.hex.encoding import encode_batch, legal_mask
from hexsweep.model import HexNet, NetConfig
from hexsweep.trainer import train


def baseline_samples_per_s(cfg, data: HexDataset, device: torch.device, steps: int) -> float:
    torch.manual_seed(cfg.seed)
    model = HexNet(NetConfig.from_config(cfg.model, data.board_size)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    n = min(len(data), steps * cfg.batch_size)
    boards = torch.from_numpy(data.field("boards")[:n]).to(device)
    to_move = torch.from_numpy(data.field("to_move")[:n]).to(device)
    planes, legal = encode_batch(boards, to_move), legal_mask(boards)
    moves = torch.from_numpy(data.field("move")[:n].astype("int64")).to(device).clamp(min=0)
    values = torch.from_numpy(data.field("value")[:n].astype("float32")).to(device)
    bs, pw, vw = cfg.batch_size, cfg.loss.policy_weight, cfg.loss.value_weight
    start, seen = time.perf_counter(), 0
    for step in range(steps):
        i = (step * bs) % max(n - bs + 1, 1)
        logits, v = model(planes[i : i + bs], legal[i : i + bs])
        loss = pw * F.cross_entropy(logits, moves[i : i + bs]) + vw * F.mse_loss(v, values[i : i + bs])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        opt.step()
        seen += len(v)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def hexsweep_samples_per_s(cfg, train_data: HexDataset, val_data: HexDataset, device: torch.device,
                           workdir: Path) -> float:
    import contextlib
    import sys

    torch.manual_seed(cfg.seed)
    model = HexNet(NetConfig.from_config(cfg.model, train_data.board_size))
    # the progress bar is drawn (into a buffer) exactly as on a terminal
    with contextlib.redirect_stderr(io.StringIO()):
        sys.stderr.isatty = lambda: True  # type: ignore[method-assign]
        outcome = train(cfg, train_data, val_data, model, device, workdir, {})
    return outcome.history[0]["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="data preset (conf/data)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose([f"data={args.preset}", "trainer.epochs=1", "trainer.checkpoints=false",
                   f"trainer.max_steps_per_epoch={args.steps}", "trainer.progress=auto", *args.overrides])
    with open_dict(cfg):
        cfg.trainer.eval_batch_size = 4096
    threads = cfg.num_threads or usable_cores()
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    folder, _ = ensure_dataset(cfg.data, cfg.paths.data)
    train_data, val_data = HexDataset(folder, "train"), HexDataset(folder, "val")
    ours, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            base.append(baseline_samples_per_s(cfg, train_data, device, args.steps))
            ours.append(hexsweep_samples_per_s(cfg, train_data, val_data, device, Path(tmp)))
            print(f"round {r + 1}: baseline {base[-1]:.0f} samples/s, hexsweep {ours[-1]:.0f} samples/s")
    b, o = statistics.median(base), statistics.median(ours)
    print(f"device {device}, {threads} threads, batch {cfg.batch_size}, {args.steps} steps, "
          f"model {cfg.model.name}, data {cfg.data.name}")
    print(f"baseline (tensors in memory) {b:.0f} samples/s; hexsweep loop {o:.0f} samples/s")
    print(f"ratio hexsweep/baseline = {o / b:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
