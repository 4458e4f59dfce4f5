"""The two-headed residual network: policy logits over the n*n cells and a value in [-1, 1].

Two shapes from one config (hexsweep.config.ModelConfig):
- ``head=conv`` (preset ``small``): constant width, no downsampling, a 1x1-conv policy head
  that keeps one logit per cell, and a pooled value head. Cheap, and any board size fits.
- ``head=pooled`` (preset ``resnet18``, the seed's shape): stages of doubling width with
  stride-2 downsampling, global average pooling, dropout, and linear policy and value heads.
Illegal cells (occupied) get the dtype's most negative logit, not -inf, so a position with
no legal move (a full final board) still gives finite losses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from hexsweep.hex.encoding import NUM_PLANES


@dataclass
class NetConfig:
    """What the network needs to be rebuilt: stored in every checkpoint."""

    board_size: int
    channels: int = 32
    stages: int = 1
    blocks_per_stage: int = 4
    downsample: bool = False
    head: str = "conv"
    dropout: float = 0.1

    @classmethod
    def from_config(cls, model_cfg, board_size: int) -> NetConfig:
        keys = ("channels", "stages", "blocks_per_stage", "downsample", "head", "dropout")
        return cls(board_size=board_size, **{k: model_cfg[k] for k in keys})

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class HexNet(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, c = cfg.board_size, cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(NUM_PLANES, c, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = c
        for stage in range(cfg.stages):
            c_out = c * 2**stage
            for i in range(cfg.blocks_per_stage):
                stride = 2 if (cfg.downsample and stage > 0 and i == 0) else 1
                blocks.append(ResidualBlock(c_in, c_out, stride))
                c_in = c_out
        self.trunk = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.head == "conv":
            self.policy_head = nn.Conv2d(c_in, 1, 1)
            self.value_head = nn.Sequential(nn.Linear(c_in, c_in), nn.ReLU(), nn.Linear(c_in, 1))
        else:
            self.policy_head = nn.Linear(c_in, n * n)
            self.value_head = nn.Linear(c_in, 1)

    def forward(
        self, planes: torch.Tensor, legal: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, n, n) planes, optional (B, n*n) legal mask -> (B, n*n) logits, (B,) value."""
        x = self.trunk(self.stem(planes))
        pooled = self.dropout(x.mean(dim=(2, 3)))
        if self.cfg.head == "conv":
            logits = self.policy_head(self.dropout(x)).flatten(1)
        else:
            logits = self.policy_head(pooled)
        value = torch.tanh(self.value_head(pooled)).squeeze(1)
        if legal is not None:
            logits = logits.masked_fill(~legal, torch.finfo(logits.dtype).min)
        return logits, value


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
