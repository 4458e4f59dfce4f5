"""A bare torch training loop on debug=tiny's network (no hexsweep runner, no data pipeline):
prints its milliseconds per step. bench/cold_path.py runs it alone and two side by side, one
thread each, to measure what the machine itself costs two jobs that share it.

    python bench/torch_loop.py [--threads 1] [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hexsweep.model import HexNet, NetConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = HexNet(NetConfig(board_size=5, channels=16, blocks_per_stage=2))  # conf/debug/tiny.yaml's
    optimizer = torch.optim.AdamW(model.parameters())
    planes, move, value = torch.randn(256, 3, 5, 5), torch.randint(0, 25, (256,)), torch.randn(256)

    def step() -> None:
        logits, v = model(planes)
        loss = F.cross_entropy(logits, move) + F.mse_loss(v, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(20):  # warm-up: allocator, first-call imports
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    print(f"{(time.perf_counter() - start) / args.steps * 1000:.3f}")


if __name__ == "__main__":
    main()
