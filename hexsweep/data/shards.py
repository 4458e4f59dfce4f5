"""The on-disk dataset format (version 1), its writer and its validating reader.

    <folder>/meta.json                       format_version, board_size, per-split counts,
                                             the generator's settings, created_at
    <folder>/<split>/shard-00000/boards.npy  int8  (N, n, n)  0 empty, 1 BLACK, 2 WHITE
                                 to_move.npy int8  (N,)       1 or 2
                                 move.npy    int16 (N,)       cell played next (row*n+col);
                                                              -1 = no policy target (the game's
                                                              final position, or a random move)
                                 value.npy   int8  (N,)       +1 if the mover went on to win, else -1
                                 game.npy    int32 (N,)       game id (splits are by game)

Splits are ``train`` and ``val``; a game's positions all land in one split. A folder is
written under a temporary name and renamed into place whole, so readers never see half
of one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hexsweep.atomic import atomic_write_json
from hexsweep.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "val")
FIELDS = {"boards": np.int8, "to_move": np.int8, "move": np.int16, "value": np.int8, "game": np.int32}


@dataclass
class Game:
    """One game as training positions: every position before each move, plus the final one."""

    grids: list[np.ndarray] = field(default_factory=list)
    movers: list[int] = field(default_factory=list)
    moves: list[int] = field(default_factory=list)
    winner: int = 0

    def add(self, grid: np.ndarray, mover: int, move: int) -> None:
        self.grids.append(grid.copy())
        self.movers.append(mover)
        self.moves.append(move)

    def __len__(self) -> int:
        return len(self.moves)

    def arrays(self, game_id: int) -> dict[str, np.ndarray]:
        movers = np.asarray(self.movers, dtype=np.int8)
        return {
            "boards": np.stack(self.grids).astype(np.int8),
            "to_move": movers,
            "move": np.asarray(self.moves, dtype=np.int16),
            "value": np.where(movers == self.winner, 1, -1).astype(np.int8),
            "game": np.full(len(self), game_id, dtype=np.int32),
        }


class ShardWriter:
    """Collects games of one split and writes them as shards of at most ``shard_size`` positions."""

    def __init__(self, folder: Path, split: str, shard_size: int) -> None:
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_positions = 0
        self.shards: list[str] = []
        self.positions = 0
        self.games = 0

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        self.pending.append(arrays)
        self.pending_positions += len(arrays["move"])
        self.games += 1
        if self.pending_positions >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"{self.split}/shard-{len(self.shards):05d}"
        path = self.folder / name
        path.mkdir(parents=True)
        for key, dtype in FIELDS.items():
            np.save(path / f"{key}.npy", np.concatenate([a[key] for a in self.pending]).astype(dtype))
        self.shards.append(name)
        self.positions += self.pending_positions
        self.pending, self.pending_positions = [], 0

    def summary(self) -> dict[str, Any]:
        return {"positions": self.positions, "games": self.games, "shards": self.shards}


def write_dataset(
    folder: Path,
    board_size: int,
    games: list[dict[str, np.ndarray]],
    val_games: set[int],
    source: dict[str, Any],
    shard_size: int,
) -> dict[str, Any]:
    """Write ``games`` (indexed by game id) into ``folder`` atomically; return meta.json's content."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writers = {split: ShardWriter(tmp, split, shard_size) for split in SPLITS}
    for game_id, arrays in enumerate(games):
        writers["val" if game_id in val_games else "train"].add(arrays)
    for w in writers.values():
        w.flush()
    meta = {
        "format_version": FORMAT_VERSION,
        "board_size": board_size,
        "splits": {split: w.summary() for split, w in writers.items()},
        "source": source,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(tmp / "meta.json", meta)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return meta


def read_meta(folder: Path, board_size: int | None = None) -> dict[str, Any]:
    """Read and check meta.json; every problem is a one-line DataError."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"no dataset at {folder}: meta.json is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path} is not valid JSON: {e}") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{meta_path}: format_version {version!r} is not supported: allowed {FORMAT_VERSION}"
        )
    if board_size is not None and meta.get("board_size") != board_size:
        raise DataError(
            f"dataset {folder} has board_size {meta.get('board_size')} but the config asks for "
            f"{board_size}: regenerate it or set data.board_size={meta.get('board_size')}"
        )
    return meta


def load_split(folder: Path, meta: dict[str, Any], split: str) -> dict[str, np.ndarray]:
    """Memory-map every shard of a split read-only and check it against meta.json.

    Returns the fields as lists of read-only memmaps concatenated lazily by the dataset.
    """
    if split not in meta.get("splits", {}):
        raise DataError(f"dataset {folder} has no split {split!r}: allowed {list(SPLITS)}")
    info = meta["splits"][split]
    n = meta["board_size"]
    out: dict[str, list[np.ndarray]] = {key: [] for key in FIELDS}
    total = 0
    for shard in info["shards"]:
        arrays = {}
        for key, dtype in FIELDS.items():
            path = folder / shard / f"{key}.npy"
            try:
                arr = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise DataError(f"shard file {path} is missing") from None
            except (ValueError, OSError) as e:
                raise DataError(f"shard file {path} is truncated or corrupt: {e}") from None
            if arr.dtype != dtype:
                raise DataError(f"shard file {path} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
            arrays[key] = arr
        count = len(arrays["move"])
        if arrays["boards"].shape[1:] != (n, n) or any(len(a) != count for a in arrays.values()):
            raise DataError(f"shard {folder / shard} has inconsistent array shapes")
        for key in FIELDS:
            out[key].append(arrays[key])
        total += count
    if total != info["positions"]:
        raise DataError(
            f"split {split!r} of {folder} has {total} positions but meta.json says {info['positions']}"
        )
    return out
