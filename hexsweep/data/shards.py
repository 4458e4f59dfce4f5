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
written under a temporary name beside its destination and renamed into place whole, so
readers never see half of one. Only a hexsweep dataset (a folder holding ``meta.json``) or an
empty folder is ever replaced; any other existing folder is refused unless the caller forces
it, and a folder holding the writer's own inputs is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hexsweep.atomic import atomic_write_json
from hexsweep.errors import DataError
from hexsweep.heartbeat import beat

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
        beat()  # writing a large dataset is progress too (the sweep's stall watchdog)
        self.positions += self.pending_positions
        self.pending, self.pending_positions = [], 0

    def summary(self) -> dict[str, Any]:
        return {"positions": self.positions, "games": self.games, "shards": self.shards}


def is_dataset(folder: Path) -> bool:
    """A hexsweep dataset folder is recognised by its ``meta.json``."""
    return folder.is_dir() and (folder / "meta.json").is_file()


def check_replaceable(folder: Path, force: bool = False, protect: Iterable[Path] = (),
                      override: str = "--force overrides") -> None:
    """Raise DataError (one line) unless writing a dataset to ``folder`` may replace what is there.

    Allowed: nothing there, an empty folder, or a hexsweep dataset; any other folder only with
    ``force``. Never (not even forced) a file, nor a folder that is or holds one of ``protect``
    (the writer's inputs). ``override`` says how the user forces it.
    """
    folder = Path(folder).absolute()
    for p in protect:
        if Path(p).resolve().is_relative_to(folder.resolve()):
            raise DataError(f"{folder} is or holds the input {p}: refusing to replace it "
                            "(not even with --force): write the dataset to another folder")
    if not (folder.exists() or folder.is_symlink()):
        return
    if not folder.is_dir():
        raise DataError(f"{folder} exists and is not a folder: refusing to replace it: give a folder path")
    if force or is_dataset(folder) or not any(folder.iterdir()):
        return
    raise DataError(f"{folder} exists and is not a hexsweep dataset (no meta.json): "
                    f"refusing to replace it; {override}")


def _swap_into_place(new: Path, folder: Path, may_replace: Callable[[], None]) -> None:
    """Rename the finished folder ``new`` to ``folder``.

    An old folder there is first checked with ``may_replace`` (raises if not), renamed aside,
    and removed only once the new one is in place.
    """
    try:
        os.rename(new, folder)  # nothing there, or an empty folder (a POSIX rename replaces it)
        return
    except OSError:
        if not folder.is_dir():
            raise
    may_replace()
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    try:
        os.rename(folder, old)  # replaces the empty placeholder
    except BaseException:
        old.rmdir()
        raise
    try:
        os.rename(new, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old)


def write_dataset(
    folder: Path,
    board_size: int,
    games: list[dict[str, np.ndarray]],
    val_games: set[int],
    source: dict[str, Any],
    shard_size: int,
    force: bool = False,
    protect: Iterable[Path] = (),
    override: str = "--force overrides",
) -> dict[str, Any]:
    """Write ``games`` (indexed by game id) into ``folder`` atomically; return meta.json's content.

    What is at ``folder`` is replaced only as ``check_replaceable`` allows (DataError otherwise).
    """
    folder = Path(folder)
    protect = list(protect)
    check_replaceable(folder, force, protect, override)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
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
        _swap_into_place(tmp, folder, lambda: check_replaceable(folder, force, protect, override))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temp folder, never anything else
        raise
    return meta


def read_meta(folder: Path, board_size: int | None = None) -> dict[str, Any]:
    """Read and check meta.json; every problem is a one-line DataError."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"no dataset at {folder}: meta.json is missing")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{meta_path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path} is not valid JSON: {e}") from None
    except OSError as e:
        raise DataError(f"{meta_path} cannot be read: {e.strerror or e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path} holds a JSON {type(meta).__name__}, not an object: the dataset is corrupt")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{meta_path}: format_version {version!r} is not supported: allowed {FORMAT_VERSION}"
        )
    _check_shape(meta, meta_path)
    if board_size is not None and meta.get("board_size") != board_size:
        raise DataError(
            f"dataset {folder} has board_size {meta.get('board_size')} but the config asks for "
            f"{board_size}: regenerate it or set data.board_size={meta.get('board_size')}"
        )
    return meta


def _check_shape(meta: dict[str, Any], meta_path: Path) -> None:
    """The keys the reader relies on, with their types: a hand-edited or foreign file is one DataError."""
    problem = None
    splits = meta.get("splits")
    if not isinstance(meta.get("board_size"), int):
        problem = f"board_size {meta.get('board_size')!r} is not an integer"
    elif not isinstance(splits, dict):
        problem = "'splits' is missing or not an object"
    else:
        for split, info in splits.items():
            if not (isinstance(info, dict) and isinstance(info.get("positions"), int)
                    and isinstance(info.get("shards"), list) and all(isinstance(x, str) for x in info["shards"])):
                problem = f"split {split!r} needs 'positions' (an integer) and 'shards' (a list of names)"
                break
    if problem:
        raise DataError(f"{meta_path} is malformed: {problem}")


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
