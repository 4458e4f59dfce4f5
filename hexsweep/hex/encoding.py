"""Network encoding: input planes seen from the mover's side, legal-move masks.

Planes (float32, shape (B, 3, n, n)):
  0: stones of the player to move;
  1: stones of the opponent;
  2: all ones when BLACK (top-bottom) is to move, all zeros when WHITE is.
Policy target: the cell index of the move played (-1 for a game's final position, which
has no next move and is excluded from the policy loss). Value target: the game result
from the mover's side, +1 if the player to move went on to win, else -1.
"""

from __future__ import annotations

import numpy as np
import torch

from hexsweep.hex.board import BLACK, EMPTY, Board

NUM_PLANES = 3


def encode_batch(boards: torch.Tensor, to_move: torch.Tensor) -> torch.Tensor:
    """(B, n, n) int boards and (B,) movers -> (B, 3, n, n) float planes."""
    mover = to_move.view(-1, 1, 1).to(boards.dtype)
    own = boards == mover
    opp = (boards != EMPTY) & ~own
    black = (to_move == BLACK).view(-1, 1, 1).expand_as(own)
    return torch.stack([own, opp, black], dim=1).float()


def legal_mask(boards: torch.Tensor) -> torch.Tensor:
    """(B, n, n) boards -> (B, n*n) bool, true where a stone may be played."""
    return (boards == EMPTY).flatten(1)


def encode_board(board: Board) -> torch.Tensor:
    """One Board -> (1, 3, n, n) planes."""
    grid = torch.from_numpy(board.grid())
    return encode_batch(grid[None], torch.tensor([board.to_move], dtype=torch.int8))


def decode_planes(planes: np.ndarray) -> tuple[np.ndarray, int]:
    """Inverse of the encoding for one position: (3, n, n) -> (grid, to_move). For tests."""
    to_move = BLACK if planes[2].max() > 0.5 else 3 - BLACK
    grid = np.zeros(planes.shape[1:], dtype=np.int8)
    grid[planes[0] > 0.5] = to_move
    grid[planes[1] > 0.5] = 3 - to_move
    return grid, to_move
