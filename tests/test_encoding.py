import numpy as np
import torch

from hexsweep.hex.board import BLACK, WHITE, Board
from hexsweep.hex.encoding import decode_planes, encode_batch, encode_board, legal_mask
from hexsweep.hex.symmetry import rotate180_batch, transpose_swap_batch


def test_planes_are_seen_from_the_movers_side():
    b = Board(4)
    b.play(0)  # BLACK
    b.play(5)  # WHITE; now BLACK to move
    p = encode_board(b)[0]
    assert p.shape == (3, 4, 4)
    assert p[0].flatten()[0] == 1 and p[1].flatten()[5] == 1 and p[2].min() == 1
    b.play(10)  # BLACK; now WHITE to move
    p = encode_board(b)[0]
    assert p[0].flatten()[5] == 1  # WHITE's own stone is in plane 0
    assert p[1].flatten()[[0, 10]].tolist() == [1, 1]
    assert p[2].max() == 0


def test_encoding_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = Board(6)
        for m in rng.permutation(36)[: rng.integers(0, 12)]:
            if not b.done:
                b.play(int(m))
        grid, to_move = decode_planes(encode_board(b)[0].numpy())
        assert np.array_equal(grid, b.grid()) and to_move == b.to_move


def test_legal_mask_marks_empty_cells():
    boards = torch.tensor([[[0, 1], [2, 0]]], dtype=torch.int8)
    assert legal_mask(boards).tolist() == [[True, False, False, True]]


def test_batch_symmetries_keep_the_move_on_the_same_stone_pattern():
    rng = np.random.default_rng(3)
    n = 5
    boards = torch.from_numpy(rng.choice([0, BLACK, WHITE], size=(8, n, n)).astype(np.int8))
    to_move = torch.from_numpy(rng.choice([BLACK, WHITE], size=8).astype(np.int8))
    moves = torch.from_numpy(rng.integers(-1, n * n, size=8))
    everything = torch.ones(8, dtype=torch.bool)
    planes = encode_batch(boards, to_move)
    r_boards, r_moves = rotate180_batch(boards, moves, everything)
    assert torch.equal(encode_batch(r_boards, to_move)[:, :2], planes[:, :2].flip(-1, -2))
    assert torch.equal(r_moves == -1, moves == -1)
    t_boards, t_to_move, t_moves = transpose_swap_batch(boards, to_move, moves, everything)
    t_planes = encode_batch(t_boards, t_to_move)
    # own/opponent stones are the transposed ones, the side-to-move plane flips
    assert torch.equal(t_planes[:, :2], planes[:, :2].transpose(-1, -2))
    assert torch.equal(t_planes[:, 2], 1 - planes[:, 2])
    for i in range(8):
        if moves[i] >= 0:
            r, c = divmod(int(moves[i]), n)
            assert int(t_moves[i]) == c * n + r
            assert int(r_moves[i]) == n * n - 1 - int(moves[i])
    nothing = torch.zeros(8, dtype=torch.bool)
    same, same_moves = rotate180_batch(boards, moves, nothing)
    assert torch.equal(same, boards) and torch.equal(same_moves, moves)
