"""Play-strength check: the trained network's greedy policy against fixed opponents.

Games are played in lockstep in one batch (one forward pass per ply for all games); the
network plays BLACK in the first half of the games and WHITE in the second half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hexsweep.heartbeat import beat
from hexsweep.hex.board import BLACK, WHITE, Board
from hexsweep.hex.encoding import encode_batch, legal_mask
from hexsweep.hex.players import RandomPlayer, ShortestPathPlayer


@dataclass(frozen=True)
class StrengthSpec:
    """Games of the per-epoch strength check that ``objective.metric=strength`` ranks by: the
    greedy policy against the generator's player (sampling at ``temperature``, no random moves)."""

    games: int
    temperature: float
    seed: int

    @classmethod
    def for_objective(cls, cfg: Any) -> StrengthSpec | None:
        """The spec when the objective is playing strength, else None (no games per epoch)."""
        if cfg.objective.metric != "strength":
            return None
        return cls(int(cfg.strength.games), float(cfg.data.temperature), int(cfg.seed))


@dataclass
class GreedyNetPlayer:
    """A network as a player: the legal cell with the highest policy logit (deterministic)."""

    model: torch.nn.Module
    device: torch.device
    deterministic = True

    def choose(self, grids: np.ndarray, mover: int, rng: np.random.Generator) -> np.ndarray:
        self.model.eval()
        return greedy_moves(self.model, grids, mover, self.device)


@torch.no_grad()
def greedy_moves(model: torch.nn.Module, grids: np.ndarray, mover: int,
                 device: torch.device) -> np.ndarray:
    boards = torch.from_numpy(grids).to(device)
    to_move = torch.full((len(grids),), mover, dtype=torch.int8, device=device)
    logits, _ = model(encode_batch(boards, to_move), legal_mask(boards))
    return logits.argmax(dim=1).cpu().numpy()


@torch.no_grad()
def win_rate(model: torch.nn.Module, opponent, board_size: int, games: int,
             device: torch.device, seed: int = 0) -> float:
    """Fraction of ``games`` the network wins against ``opponent`` (a hexsweep.hex.players player)."""
    if games <= 0:
        return float("nan")
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    n = board_size
    net_colour = np.where(np.arange(games) < (games + 1) // 2, BLACK, WHITE)
    boards = [Board(n) for _ in range(games)]
    grids = np.zeros((games, n, n), dtype=np.int8)
    mover = BLACK
    while not all(b.done for b in boards):
        beat()
        active = np.array([not b.done for b in boards])
        net_turn = np.flatnonzero(active & (net_colour == mover))
        opp_turn = np.flatnonzero(active & (net_colour != mover))
        moves = np.zeros(games, dtype=np.int64)
        if len(net_turn):
            moves[net_turn] = greedy_moves(model, grids[net_turn], mover, device)
        if len(opp_turn):
            moves[opp_turn] = opponent.choose(grids[opp_turn], mover, rng)
        for g in np.flatnonzero(active):
            boards[g].play(int(moves[g]))
            grids[g].flat[moves[g]] = mover
        mover = WHITE if mover == BLACK else BLACK
    model.train(was_training)
    wins = sum(b.winner == c for b, c in zip(boards, net_colour, strict=True))
    return wins / games


def strength_report(model: torch.nn.Module, board_size: int, games: int, temperature: float,
                    device: torch.device, seed: int) -> dict[str, float]:
    return {
        "games": games,
        "win_rate_vs_generator": win_rate(model, ShortestPathPlayer(temperature, 0.0), board_size,
                                          games, device, seed),
        "win_rate_vs_random": win_rate(model, RandomPlayer(), board_size, games, device, seed + 1),
    }
