import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hexsweep.errors import IllegalMoveError
from hexsweep.hex.board import BLACK, EMPTY, WHITE, Board, winner_of_grid
from hexsweep.hex.symmetry import (
    rotate180_cell,
    rotate180_grid,
    transpose_cell,
    transpose_swap_grid,
)


def play_all(n, moves, swap=False):
    b = Board(n, swap_rule=swap)
    for m in moves:
        b.play(m)
    return b


def test_black_connects_top_to_bottom():
    b = Board(3)
    # BLACK a1,a2,a3 (column 0, rows 0..2) while WHITE plays elsewhere
    for black, white in [(0, 2), (3, 5)]:
        b.play(black)
        b.play(white)
    assert not b.done
    b.play(6)
    assert b.winner == BLACK


def test_white_connects_left_to_right():
    b = Board(3)
    for black, white in [(0, 3), (1, 4)]:
        b.play(black)
        b.play(white)
    assert not b.done
    b.play(8)  # BLACK plays c3, no connection
    b.play(5)  # WHITE row 1 complete: left to right
    assert b.winner == WHITE


def test_hex_adjacency_is_the_rhombus_not_the_square():
    # (0,1) and (1,0) touch in Hex; (0,0) and (1,1) do not.
    b = Board(2 + 1)
    grid = np.zeros((3, 3), dtype=np.int8)
    grid[0, 2] = grid[1, 1] = grid[2, 0] = BLACK  # anti-diagonal chain connects top-bottom
    assert winner_of_grid(grid) == BLACK
    grid2 = np.zeros((3, 3), dtype=np.int8)
    grid2[0, 0] = grid2[1, 1] = grid2[2, 2] = BLACK  # main diagonal does not
    assert winner_of_grid(grid2) == EMPTY
    assert b.n == 3


def test_illegal_moves_are_errors():
    b = Board(4)
    b.play(5)
    with pytest.raises(IllegalMoveError, match="occupied"):
        b.play(5)
    with pytest.raises(IllegalMoveError, match="off the 4x4 board"):
        b.play(16 + 3)
    with pytest.raises(IllegalMoveError, match="out of range"):
        Board(2)
    with pytest.raises(IllegalMoveError, match="out of range"):
        Board(20)


def test_undo_and_copy_restore_everything():
    b = Board(5)
    rng = np.random.default_rng(1)
    moves = rng.permutation(25)[:10].tolist()
    for m in moves[:6]:
        b.play(m)
    snapshot = b.copy()
    for m in moves[6:]:
        b.play(m)
    for _ in moves[6:]:
        b.undo()
    assert np.array_equal(b.cells, snapshot.cells) and b.to_move == snapshot.to_move
    assert b.history == snapshot.history and b.winner == snapshot.winner
    c = b.copy()
    c.play(moves[6])
    assert b.cells[moves[6]] == EMPTY  # the copy is independent


def test_swap_rule_mirrors_the_first_stone():
    b = Board(5, swap_rule=True)
    b.play(1 * 5 + 3)  # BLACK at row 1, col 3
    assert b.swap_move in b.legal_moves()
    b.play(b.swap_move)
    assert b.cells[3 * 5 + 1] == WHITE and b.cells[1 * 5 + 3] == EMPTY
    assert b.to_move == BLACK
    assert b.swap_move not in b.legal_moves()
    with pytest.raises(IllegalMoveError):
        Board(5).play(25)  # no swap without the rule


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 11), seed=st.integers(0, 2**31 - 1))
def test_random_games_end_with_exactly_one_winner(n, seed):
    rng = np.random.default_rng(seed)
    b = Board(n)
    for m in rng.permutation(n * n):
        if b.done:
            break
        b.play(int(m))
        # union-find agrees with an independent flood fill after every move
        assert b.winner == winner_of_grid(b.grid())
    assert b.done  # a full Hex board always has a winner
    grid = b.grid()
    black_wins = winner_of_grid(np.where(grid == BLACK, BLACK, EMPTY).astype(np.int8)) == BLACK
    white_wins = winner_of_grid(np.where(grid == WHITE, WHITE, EMPTY).astype(np.int8)) == WHITE
    assert black_wins != white_wins  # exactly one


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 9), seed=st.integers(0, 2**31 - 1))
def test_symmetries_preserve_the_winner(n, seed):
    rng = np.random.default_rng(seed)
    grid = rng.choice([BLACK, WHITE], size=(n, n)).astype(np.int8)  # full board: a winner exists
    w = winner_of_grid(grid)
    assert w in (BLACK, WHITE)
    assert winner_of_grid(rotate180_grid(grid)) == w
    assert winner_of_grid(transpose_swap_grid(grid)) == (WHITE if w == BLACK else BLACK)


def test_cell_maps_are_involutions():
    n = 7
    for cell in range(n * n):
        assert rotate180_cell(n, rotate180_cell(n, cell)) == cell
        assert transpose_cell(n, transpose_cell(n, cell)) == cell
    assert rotate180_cell(n, 0) == n * n - 1 and transpose_cell(n, 1) == n
