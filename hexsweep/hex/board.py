"""The Hex board: standard rules with union-find winner detection.

Conventions (used everywhere in hexsweep):
- cells are indexed ``row * n + col``; row 0 is the top, column 0 the left (trmph's ``a1``);
- BLACK (1) moves first and connects top to bottom; WHITE (2) connects left to right;
- with the swap rule, WHITE's first move may be ``board.swap_move`` (= n*n): BLACK's stone
  is replaced by a WHITE stone on the mirrored cell (row and column exchanged), which is
  the colour-fixed form of "the second player takes over the first move".

The union-find holds one node per cell plus four virtual edge nodes; a stone is joined to
its same-coloured neighbours and to the edges it touches, so "has BLACK won" is one
``find(TOP) == find(BOTTOM)``. ``undo`` restores a snapshot, since union-find cannot unjoin.
"""

from __future__ import annotations

import numpy as np

from hexsweep.errors import IllegalMoveError

EMPTY, BLACK, WHITE = 0, 1, 2
MIN_SIZE, MAX_SIZE = 3, 19

# Hex neighbours on the rhombus: up, up-right, left, right, down-left, down.
NEIGHBOUR_OFFSETS = ((-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0))


def other(player: int) -> int:
    return BLACK if player == WHITE else WHITE


def neighbours(n: int, cell: int) -> list[int]:
    r, c = divmod(cell, n)
    out = []
    for dr, dc in NEIGHBOUR_OFFSETS:
        rr, cc = r + dr, c + dc
        if 0 <= rr < n and 0 <= cc < n:
            out.append(rr * n + cc)
    return out


class Board:
    """A Hex position with move history; play/undo/copy and an always-current winner."""

    def __init__(self, n: int, swap_rule: bool = False) -> None:
        if not isinstance(n, int) or not MIN_SIZE <= n <= MAX_SIZE:
            raise IllegalMoveError(f"board size {n!r} is out of range: allowed {MIN_SIZE}..{MAX_SIZE}")
        self.n = n
        self.swap_rule = swap_rule
        self.cells = np.zeros(n * n, dtype=np.int8)
        self.to_move = BLACK
        self.winner = EMPTY
        self.history: list[int] = []
        self._top, self._bottom, self._left, self._right = range(n * n, n * n + 4)
        self._parent = list(range(n * n + 4))
        self._snapshots: list[tuple[list[int], np.ndarray]] = []
        self._neighbours = [neighbours(n, i) for i in range(n * n)]

    @property
    def swap_move(self) -> int:
        return self.n * self.n

    @property
    def done(self) -> bool:
        return self.winner != EMPTY

    def copy(self) -> Board:
        b = Board.__new__(Board)
        b.__dict__.update(self.__dict__)
        b.cells = self.cells.copy()
        b.history = list(self.history)
        b._parent = list(self._parent)
        b._snapshots = [(list(p), c.copy()) for p, c in self._snapshots]
        return b

    def legal_moves(self) -> list[int]:
        if self.done:
            return []
        moves = np.flatnonzero(self.cells == EMPTY).tolist()
        if self.swap_rule and len(self.history) == 1:
            moves.append(self.swap_move)
        return moves

    def is_legal(self, move: int) -> bool:
        if self.done:
            return False
        if move == self.swap_move:
            return self.swap_rule and len(self.history) == 1
        return 0 <= move < self.n * self.n and self.cells[move] == EMPTY

    def play(self, move: int) -> None:
        if not self.is_legal(move):
            raise IllegalMoveError(self._illegal_reason(move))
        self._snapshots.append((list(self._parent), self.cells.copy()))
        if move == self.swap_move:
            first = self.history[0]
            r, c = divmod(first, self.n)
            self.cells[first] = EMPTY
            self._parent = list(range(self.n * self.n + 4))
            self._place(c * self.n + r, WHITE)
        else:
            self._place(move, self.to_move)
        self.history.append(move)
        self.to_move = other(self.to_move)

    def undo(self) -> int:
        if not self.history:
            raise IllegalMoveError("nothing to undo: the board is empty")
        move = self.history.pop()
        self._parent, self.cells = self._snapshots.pop()
        self.to_move = other(self.to_move)
        self.winner = self._compute_winner()
        return move

    def _illegal_reason(self, move: int) -> str:
        if self.done:
            return f"move {move}: the game is over"
        if move == self.swap_move:
            return "swap is only legal as the second move with swap_rule=True"
        if not 0 <= move < self.n * self.n:
            return f"move {move} is off the {self.n}x{self.n} board: allowed 0..{self.n * self.n - 1}"
        return f"move {move} ({self.cell_name(move)}) is occupied"

    def cell_name(self, cell: int) -> str:
        r, c = divmod(cell, self.n)
        return f"{chr(ord('a') + c)}{r + 1}"

    def _find(self, x: int) -> int:
        parent = self._parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[ra] = rb

    def _place(self, cell: int, colour: int) -> None:
        n = self.n
        self.cells[cell] = colour
        r, c = divmod(cell, n)
        for nb in self._neighbours[cell]:
            if self.cells[nb] == colour:
                self._union(cell, nb)
        if colour == BLACK:
            if r == 0:
                self._union(cell, self._top)
            if r == n - 1:
                self._union(cell, self._bottom)
        else:
            if c == 0:
                self._union(cell, self._left)
            if c == n - 1:
                self._union(cell, self._right)
        self.winner = self._compute_winner()

    def _compute_winner(self) -> int:
        if self._find(self._top) == self._find(self._bottom):
            return BLACK
        if self._find(self._left) == self._find(self._right):
            return WHITE
        return EMPTY

    def grid(self) -> np.ndarray:
        """The cells as an (n, n) int8 array (a copy)."""
        return self.cells.reshape(self.n, self.n).copy()

    def __str__(self) -> str:
        symbols = {EMPTY: ".", BLACK: "B", WHITE: "W"}
        rows = []
        for r in range(self.n):
            row = " ".join(symbols[int(v)] for v in self.cells[r * self.n : (r + 1) * self.n])
            rows.append(" " * r + row)
        return "\n".join(rows)


def winner_of_grid(grid: np.ndarray) -> int:
    """Winner of an arbitrary filled or partial grid, by flood fill (independent of Board).

    Used by tests to cross-check the union-find, and by trmph import to verify records.
    """
    n = grid.shape[0]
    for colour, starts, reached in (
        (BLACK, [(0, c) for c in range(n)], lambda r, c: r == n - 1),
        (WHITE, [(r, 0) for r in range(n)], lambda r, c: c == n - 1),
    ):
        stack = [(r, c) for r, c in starts if grid[r, c] == colour]
        seen = set(stack)
        while stack:
            r, c = stack.pop()
            if reached(r, c):
                return colour
            for dr, dc in NEIGHBOUR_OFFSETS:
                rr, cc = r + dr, c + dc
                if 0 <= rr < n and 0 <= cc < n and grid[rr, cc] == colour and (rr, cc) not in seen:
                    seen.add((rr, cc))
                    stack.append((rr, cc))
    return EMPTY
