import json
import multiprocessing
import subprocess
import sys

import numpy as np
import pytest

from hexsweep.cli import compose
from hexsweep.data.dataset import HexDataset
from hexsweep.data.generate import GeneratorSettings, dataset_folder, ensure_dataset, generate, play_chunk
from hexsweep.data.import_trmph import import_trmph
from hexsweep.data.shards import FORMAT_VERSION, read_meta
from hexsweep.errors import DataError
from hexsweep.hex.board import BLACK, EMPTY, WHITE, winner_of_grid


def tiny_data_cfg(**changes):
    cfg = compose(["data=tiny", *(f"data.{k}={v}" for k, v in changes.items())])
    return cfg.data


def test_generation_is_deterministic_and_independent_of_worker_count(tmp_path):
    data = tiny_data_cfg(num_positions=600)
    generate(data, tmp_path / "a", workers=1, progress=False)
    generate(data, tmp_path / "b", workers=2, progress=False)
    for split in ("train", "val"):
        a, b = HexDataset(tmp_path / "a", split), HexDataset(tmp_path / "b", split)
        for key in ("boards", "to_move", "move", "value", "game"):
            assert np.array_equal(a.field(key), b.field(key)), (split, key)
    other = tiny_data_cfg(num_positions=600, seed=99)
    generate(other, tmp_path / "c", workers=1, progress=False)
    assert not np.array_equal(HexDataset(tmp_path / "c", "train").field("boards")[:200],
                              HexDataset(tmp_path / "a", "train").field("boards")[:200])


def test_split_is_by_game_and_targets_are_consistent(tiny_dataset):
    train, val = HexDataset(tiny_dataset, "train"), HexDataset(tiny_dataset, "val")
    assert len(train) + len(val) >= 4000
    assert not set(train.field("game")) & set(val.field("game"))
    boards, moves, movers = train.field("boards"), train.field("move"), train.field("to_move")
    values, games = train.field("value"), train.field("game")
    flat = boards.reshape(len(boards), -1)
    targets = moves >= 0
    # a policy target is always an empty cell; every game ends with one target-less position
    assert (flat[np.flatnonzero(targets), moves[targets]] == EMPTY).all()
    last_of_game = np.r_[games[1:] != games[:-1], True]
    assert (moves[last_of_game] == -1).all()
    # the final position's winner agrees with the value targets of that game
    for i in np.flatnonzero(last_of_game)[:50]:
        winner = winner_of_grid(boards[i])
        assert winner in (BLACK, WHITE)
        mover_won = movers[i] == winner
        assert values[i] == (1 if mover_won else -1)
    # both colours to move, both results, most positions carry a policy target
    assert set(np.unique(movers)) == {BLACK, WHITE} and set(np.unique(values)) == {-1, 1}
    assert targets.mean() > 0.7


def test_generator_is_not_random_play():
    settings = GeneratorSettings(7, 0, 0.1, 5, 0.25, 0.0, 0, 32, 1000)
    games = play_chunk(settings, 0)
    lengths = [len(g["move"]) for g in games]
    # random play on 7x7 takes ~35 moves on average; purposeful play connects much sooner
    assert np.mean(lengths) < 30


def test_dataset_is_memory_mapped_read_only(tiny_dataset):
    ds = HexDataset(tiny_dataset, "train")
    mapped = ds._fields["boards"][0]
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    batch = next(ds.batches(64, shuffle=True, rng=np.random.default_rng(0)))
    assert batch["boards"].shape == (64, 5, 5) and batch["move"].dtype.is_floating_point is False
    rows = ds.gather(np.array([5, 1, 3]))
    assert np.array_equal(rows["boards"][1], ds.field("boards")[1])


def test_multiple_shards_read_as_one(tmp_path):
    data = tiny_data_cfg(num_positions=900, shard_size=200)
    generate(data, tmp_path / "d", workers=1, progress=False)
    meta = read_meta(tmp_path / "d")
    assert len(meta["splits"]["train"]["shards"]) >= 3
    ds = HexDataset(tmp_path / "d", "train")
    idx = np.array([len(ds) - 1, 0, 250, 199, 200])
    rows = ds.gather(idx)
    assert np.array_equal(rows["game"], ds.field("game")[idx])


def test_corrupt_and_mismatched_data_are_one_line_errors(tmp_path):
    data = tiny_data_cfg(num_positions=300)
    folder = tmp_path / "ds"
    generate(data, folder, workers=1, progress=False)
    with pytest.raises(DataError, match="board_size 5 but the config asks for 7"):
        HexDataset(folder, "train", board_size=7)
    meta = json.loads((folder / "meta.json").read_text())
    meta["format_version"] = 99
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format_version 99 is not supported: allowed 1"):
        HexDataset(folder, "train")
    meta["format_version"] = FORMAT_VERSION
    (folder / "meta.json").write_text(json.dumps(meta))
    shard = folder / meta["splits"]["train"]["shards"][0] / "boards.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        HexDataset(folder, "train")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="meta.json is missing"):
        HexDataset(tmp_path / "nothing", "train")


def _ensure(args):
    root, = args
    data = tiny_data_cfg(num_positions=500)
    folder, meta = ensure_dataset(data, root, workers=1)
    return str(folder), meta["created_at"]


def test_parallel_jobs_generate_the_dataset_once(tmp_path):
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_ensure, [(str(tmp_path),)] * 3)
    assert len({r[0] for r in results}) == 1
    assert len({r[1] for r in results}) == 1  # one creation, read by all three
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        dataset_folder(tiny_data_cfg(num_positions=500), tmp_path).name]


TRMPH = """\
# a comment line
http://www.trmph.com/hex/board#5,a1b1a2b2a3b3a4b4a5 1
http://www.trmph.com/hex/board#5,c3a1 2

http://www.trmph.com/hex/board#5,a1a1 1
http://www.trmph.com/hex/board#5,z9 1
http://www.trmph.com/hex/board#7,a1 1
garbage line
http://www.trmph.com/hex/board#5,a1b1a2b2a3b3a4b4a5 2
"""


def test_trmph_import_skips_malformed_lines_with_a_count(tmp_path):
    src = tmp_path / "games.trmph"
    src.write_text(TRMPH)
    meta, report = import_trmph([str(tmp_path)], tmp_path / "out", val_fraction=0.4, seed=0)
    assert len(report.games) == 2 and report.lines == 7 and len(report.skipped) == 5
    reasons = "\n".join(report.skipped)
    assert "games.trmph:5: move 2: a1 is occupied" in reasons
    assert "games.trmph:6" in reasons and "off the 5x5 board" in reasons
    assert "games.trmph:7: board size 7 differs" in reasons
    assert "games.trmph:9: declared winner 2 but player 1 connected" in reasons
    train, val = HexDataset(tmp_path / "out", "train", 5), HexDataset(tmp_path / "out", "val", 5)
    assert len(train) + len(val) == 10 + 3
    everything = {k: np.concatenate([train.field(k), val.field(k)]) for k in ("move", "value", "to_move")}
    first = everything["move"][everything["move"] >= 0][:2].tolist()
    assert first in ([0, 1], [12, 0])  # a1 -> cell 0, b1 -> cell 1 (columns are letters)


def test_trmph_cli_strict_mode_names_the_line(tmp_path):
    src = tmp_path / "g.trmph"
    src.write_text(TRMPH)
    out = subprocess.run([sys.executable, "-m", "hexsweep.data.import_trmph", str(src), "--out",
                          str(tmp_path / "o"), "--strict"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"hexsweep: error: malformed record at {src}:5: move 2: a1 is occupied"]
    ok = subprocess.run([sys.executable, "-m", "hexsweep.data.import_trmph", str(src), "--out",
                         str(tmp_path / "o")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "skipped 5 of 7 records as malformed" in ok.stderr
    assert "data.board_size=5" in ok.stdout
