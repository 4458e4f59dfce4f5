"""Board symmetries of Hex, on numpy grids and on batches of torch tensors.

Two symmetries keep the rules intact: the 180-degree rotation (same colours, same
winner) and the transpose with colour swap (BLACK's top-bottom goal becomes WHITE's
left-right goal, so the winner's colour swaps too). A position seen from the mover's side
(encoding.py) is invariant in meaning under both, which makes them free augmentation.
"""

from __future__ import annotations

import numpy as np
import torch

from hexsweep.hex.board import BLACK, EMPTY, WHITE


def swap_colours(grid: np.ndarray) -> np.ndarray:
    out = grid.copy()
    out[grid == BLACK] = WHITE
    out[grid == WHITE] = BLACK
    return out


def rotate180_grid(grid: np.ndarray) -> np.ndarray:
    return grid[::-1, ::-1].copy()


def rotate180_cell(n: int, cell: int) -> int:
    return n * n - 1 - cell


def transpose_swap_grid(grid: np.ndarray) -> np.ndarray:
    return swap_colours(grid.T)


def transpose_cell(n: int, cell: int) -> int:
    r, c = divmod(cell, n)
    return c * n + r


def rotate180_batch(
    boards: torch.Tensor, moves: torch.Tensor, select: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the positions where ``select`` is true; moves of -1 (no move) stay -1."""
    n = boards.shape[-1]
    rotated = torch.where(select[:, None, None], boards.flip(-1, -2), boards)
    new_moves = torch.where(select & (moves >= 0), n * n - 1 - moves, moves)
    return rotated, new_moves


def transpose_swap_batch(
    boards: torch.Tensor, to_move: torch.Tensor, moves: torch.Tensor, select: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transpose and swap colours where ``select`` is true; the mover's result is unchanged."""
    n = boards.shape[-1]
    t = boards.transpose(-1, -2)
    swapped = torch.where(t == EMPTY, t, (BLACK + WHITE) - t)
    new_boards = torch.where(select[:, None, None], swapped, boards)
    new_to_move = torch.where(select, (BLACK + WHITE) - to_move, to_move)
    r, c = moves // n, moves % n
    new_moves = torch.where(select & (moves >= 0), c * n + r, moves)
    return new_boards, new_to_move, new_moves
