"""Generate a self-play dataset: ``python -m hexsweep.data.generate data=<preset>``.

Games are played in chunks of ``games_per_chunk`` games in lockstep by the shortest-path
player (hexsweep/hex/players.py). Chunk i is seeded from (data.seed, i) alone, so the
dataset is identical whatever the number of worker processes. Chunks are generated in
waves across processes until at least ``num_positions`` positions exist; whole games are
kept (the last game may overshoot). A seeded random subset of games, never positions,
becomes the validation split.

Policy targets: the first ``random_opening_moves`` moves and the epsilon-random moves are
stored with move = -1 (no policy target: they are noise by construction), like the final
position. Their value targets are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from hexsweep.data.shards import FORMAT_VERSION, Game, check_replaceable, read_meta, write_dataset
from hexsweep.heartbeat import beat
from hexsweep.hex.board import BLACK, WHITE, Board
from hexsweep.hex.players import RandomPlayer, ShortestPathPlayer

log = logging.getLogger(__name__)

GENERATOR_KEYS = ("board_size", "num_positions", "val_fraction", "seed", "temperature", "epsilon",
                  "random_opening_moves", "games_per_chunk", "shard_size")


@dataclass(frozen=True)
class GeneratorSettings:
    board_size: int
    num_positions: int
    val_fraction: float
    seed: int
    temperature: float
    epsilon: float
    random_opening_moves: int
    games_per_chunk: int
    shard_size: int

    @classmethod
    def from_config(cls, data_cfg: Any) -> GeneratorSettings:
        return cls(**{k: data_cfg[k] for k in GENERATOR_KEYS})

    def fingerprint(self) -> str:
        blob = json.dumps({"v": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def dataset_folder(data_cfg: Any, data_root: str | os.PathLike) -> Path:
    """Where a data preset lives: its explicit ``path``, or ``<root>/<name>-<settings hash>``."""
    if data_cfg.path:
        return Path(data_cfg.path).expanduser().resolve()
    settings = GeneratorSettings.from_config(data_cfg)
    return (Path(data_root) / f"{data_cfg.name}-{settings.fingerprint()}").resolve()


def play_chunk(settings: GeneratorSettings, chunk: int) -> list[dict[str, np.ndarray]]:
    """Play one chunk of games; return each game's arrays (game ids filled in later)."""
    rng = np.random.default_rng([settings.seed, chunk])
    n, b = settings.board_size, settings.games_per_chunk
    player = ShortestPathPlayer(settings.temperature, epsilon=0.0)
    boards = [Board(n) for _ in range(b)]
    games = [Game() for _ in range(b)]
    grids = np.zeros((b, n, n), dtype=np.int8)
    mover, ply = BLACK, 0
    while True:
        active = np.array([not bd.done for bd in boards])
        if not active.any():
            break
        idx = np.flatnonzero(active)
        sub = grids[idx]
        if ply < settings.random_opening_moves:
            moves, targets = RandomPlayer().choose(sub, mover, rng), np.full(len(idx), -1)
        else:
            moves = player.choose(sub, mover, rng)
            explore = rng.random(len(idx)) < settings.epsilon
            random_moves = RandomPlayer().choose(sub, mover, rng)
            moves = np.where(explore, random_moves, moves)
            targets = np.where(explore, -1, moves)
        for j, g in enumerate(idx):
            games[g].add(grids[g], mover, int(targets[j]))
            boards[g].play(int(moves[j]))
            grids[g].flat[moves[j]] = mover
        mover = WHITE if mover == BLACK else BLACK
        ply += 1
    out = []
    for bd, game in zip(boards, games, strict=True):
        game.add(bd.grid(), bd.to_move, -1)  # the final position: no next move
        game.winner = bd.winner
        out.append(game.arrays(0))
    return out


def _play_chunk_star(args: tuple[GeneratorSettings, int]) -> list[dict[str, np.ndarray]]:
    return play_chunk(*args)


def generate_games(settings: GeneratorSettings, workers: int, progress: bool) -> list[dict]:
    """Play chunks in waves of ``workers`` until ``num_positions`` is reached; keep order."""
    games: list[dict[str, np.ndarray]] = []
    total, chunk = 0, 0
    bar = tqdm(total=settings.num_positions, desc="self-play positions", unit="pos",
               disable=not progress, file=sys.stderr)
    # spawn, not fork: a training job generating its dataset already runs threads (the resource
    # sampler), and a child forked from a threaded process can inherit a held lock and hang
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        while total < settings.num_positions:
            wave = [(settings, chunk + i) for i in range(max(workers, 1))]
            chunk += len(wave)
            results = pool.imap(_play_chunk_star, wave) if pool else map(_play_chunk_star, wave)
            for chunk_games in results:
                beat()  # a job generating its dataset is making progress (the stall watchdog)
                for arrays in chunk_games:
                    if total >= settings.num_positions:
                        break
                    games.append(arrays)
                    total += len(arrays["move"])
                    bar.update(len(arrays["move"]))
    finally:
        if pool:
            pool.terminate()
        bar.close()
    for game_id, arrays in enumerate(games):
        arrays["game"][:] = game_id
    return games


def split_games(num_games: int, val_fraction: float, seed: int) -> set[int]:
    rng = np.random.default_rng([seed, 0x5EED])
    n_val = max(1, round(num_games * val_fraction)) if num_games > 1 else 0
    return set(rng.permutation(num_games)[:n_val].tolist())


# how a user gets past a folder that write_dataset refuses to replace (there is no --force here)
MOVE_IT = "move it away, or set data.path or paths.data to another folder"


def generate(data_cfg: Any, folder: Path, workers: int | None = None, progress: bool = True) -> dict:
    """Generate the dataset of ``data_cfg`` into ``folder``; returns its meta.

    ``folder`` may be new, empty or an earlier dataset (replaced whole); anything else is a DataError.
    """
    check_replaceable(folder, override=MOVE_IT)  # before minutes of self-play
    settings = GeneratorSettings.from_config(data_cfg)
    workers = workers or data_cfg.get("workers") or default_workers()
    log.info("generating %s into %s with %d processes", data_cfg.name, folder, workers)
    games = generate_games(settings, workers, progress)
    val = split_games(len(games), settings.val_fraction, settings.seed)
    source = {"generator": "shortest_path_selfplay", "settings": asdict(settings)}
    return write_dataset(folder, settings.board_size, games, val, source, settings.shard_size, override=MOVE_IT)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ensure_dataset(data_cfg: Any, data_root: str | os.PathLike, workers: int | None = None,
                   progress: bool = False) -> tuple[Path, dict]:
    """Return the dataset folder and its meta, generating it first if it is missing.

    Generation runs under a file lock beside the folder, so N parallel jobs that start
    together generate it once; the others wait, then read the finished folder (it is
    renamed into place whole, so a half-written one is never visible).
    """
    folder = dataset_folder(data_cfg, data_root)
    if data_cfg.path:
        return folder, read_meta(folder, data_cfg.board_size)
    if not (folder / "meta.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _acquire_beating(FileLock(str(folder) + ".lock"), folder):
            if not (folder / "meta.json").is_file():
                generate(data_cfg, folder, workers, progress)
    return folder, read_meta(folder, data_cfg.board_size)


def _acquire_beating(lock: FileLock, folder: Path, beat_s: float = 1.0) -> Any:
    """Take the dataset's lock, beating the heartbeat while another job holds it.

    filelock's own blocking wait beats nothing, and a job waiting for another job's
    generation (minutes at the seed's scale) is not stalled: the stall watchdog would kill
    it. So the wait is a loop of short timed tries, as the slot and memory waits are.
    Returns filelock's proxy of the held lock: entering it does not take the lock again,
    leaving it releases it.
    """
    told = False
    while True:
        try:
            return lock.acquire(timeout=beat_s)
        except Timeout:
            if not told:
                log.info("waiting for %s: another process is generating it (lock %s)", folder, lock.lock_file)
                told = True
            beat()  # waiting is not stalling


def main() -> None:
    from hexsweep.cli import compose_from_argv, run_cli

    cfg = compose_from_argv("hexsweep.data.generate")
    folder = dataset_folder(cfg.data, cfg.paths.data)
    meta = run_cli(lambda: generate(cfg.data, folder, progress=True))
    splits = meta["splits"]
    print(f"wrote {folder}: train {splits['train']['positions']} positions "
          f"({splits['train']['games']} games), val {splits['val']['positions']} positions "
          f"({splits['val']['games']} games)")


if __name__ == "__main__":
    main()
