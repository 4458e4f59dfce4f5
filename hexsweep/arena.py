"""Games between players, batched: the engine of ``python -m hexsweep.tournament``.

All games of a share are played in lockstep: at every ply the games are grouped by the player
to move, and each player chooses for its whole group at once (one forward pass of a network
for all the games it is to move in, on the worker's device). Networks play greedily and are
deterministic, so each game of a tournament starts from its own opening: a few stones chosen
among the ones the generator's player finds balanced (``balanced_openings``), each played twice
with the colours swapped. The reference players sample; each pairing draws from its own random
stream, so the games do not depend on how the pairings were shared among the workers.

A worker process holds one slot of the machine's pool (hexsweep/resources/slots.py), as a
training job does, for as long as it lives; ``init_worker`` and ``play_share`` are its side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hexsweep.errors import HexsweepError
from hexsweep.heartbeat import beat
from hexsweep.hex.board import BLACK, WHITE, Board
from hexsweep.hex.players import RandomPlayer, ShortestPathPlayer

PROBE_GAMES = 8  # self-play games of the generator's player per candidate opening


class TournamentError(HexsweepError):
    """The tournament cannot be played as asked (no checkpoints, too few openings, ...)."""


@dataclass(frozen=True)
class Match:
    """One game to play: ``index`` orders the output, ``pairing`` picks the random stream."""

    index: int
    pairing: int
    black: str
    white: str
    opening: tuple[int, ...]


@dataclass
class GameRecord:
    match: Match
    moves: list[int] = field(default_factory=list)
    winner: int = 0

    @property
    def black_won(self) -> bool:
        return self.winner == BLACK


def play(matches: list[Match], players: dict[str, Any], n: int, seed: int,
         on_finished: Callable[[int], None] | None = None) -> list[GameRecord]:
    """Play every match to the end, in lockstep; players choose for a batch of grids at once
    (``choose(grids, mover, rng)``, as hexsweep.hex.players)."""
    boards = []
    for m in matches:
        board = Board(n)
        for move in m.opening:
            board.play(move)
        boards.append(board)
    grids = np.stack([b.grid() for b in boards]) if boards else np.zeros((0, n, n), np.int8)
    rngs = {p: np.random.default_rng([seed, p]) for p in sorted({m.pairing for m in matches})}
    while True:
        active = [g for g, b in enumerate(boards) if not b.done]
        if not active:
            break
        beat()
        groups: dict[tuple, list[int]] = {}
        for g in active:
            m, mover = matches[g], boards[g].to_move
            name = m.black if mover == BLACK else m.white
            shared = getattr(players[name], "deterministic", False)
            groups.setdefault((name, mover, None if shared else m.pairing), []).append(g)
        for (name, mover, pairing), idx in groups.items():
            rng = rngs[pairing] if pairing is not None else rngs[matches[idx[0]].pairing]
            moves = players[name].choose(grids[idx], mover, rng)
            for g, move in zip(idx, moves, strict=True):
                boards[g].play(int(move))
                grids[g].flat[int(move)] = mover
        if on_finished is not None:
            done = sum(boards[g].done for g in active)
            if done:
                on_finished(done)
    return [GameRecord(m, list(b.history), int(b.winner)) for m, b in zip(matches, boards, strict=True)]


def balanced_openings(n: int, count: int, temperature: float, seed: int,
                      probe_games: int = PROBE_GAMES) -> tuple[list[tuple[int, ...]], list[float]]:
    """``count`` openings (one stone, or a stone and a reply) whose outcome the generator's own
    self-play finds closest to even; with the first player's win rate of each.

    Candidates: every first move, plus random two-stone openings when more are needed."""
    cells = n * n
    rng = np.random.default_rng([seed, 7])
    candidates: dict[tuple[int, ...], None] = {(c,): None for c in range(cells)}
    want = min(cells + max(0, 4 * count - cells), cells + cells * (cells - 1))
    while len(candidates) < want:
        a, b = rng.choice(cells, 2, replace=False)
        candidates[(int(a), int(b))] = None
    openings = list(candidates)
    if count > len(openings):
        raise TournamentError(f"{2 * count} games per pairing need {count} distinct openings: a {n}x{n} board "
                              f"offers {len(openings)}; allowed --games <= {2 * len(openings)}")
    matches = [Match(i * probe_games + k, 0, "ref", "ref", o) for i, o in enumerate(openings)
               for k in range(probe_games)]
    games = play(matches, {"ref": ShortestPathPlayer(temperature, 0.0)}, n, seed)
    won = np.array([g.black_won for g in games], dtype=float).reshape(len(openings), probe_games)
    rate = won.mean(axis=1)
    order = sorted(range(len(openings)), key=lambda i: (abs(rate[i] - 0.5), len(openings[i]), i))[:count]
    return [openings[i] for i in order], [float(rate[i]) for i in order]


def trmph_line(n: int, moves: list[int], winner: int) -> str:
    """One game as hexsweep.data.import_trmph reads it: cells as <column letter><row number>."""
    cells = "".join(f"{chr(ord('a') + m % n)}{m // n + 1}" for m in moves)
    return f"http://www.trmph.com/hex/board#{n},{cells} {1 if winner == BLACK else 2}"


# -- the worker process ------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def init_worker(spec: dict[str, Any], progress: Any) -> None:
    """ProcessPoolExecutor initializer: remember what to play with; the slot comes with the first
    share (an initializer that raises would break the whole pool)."""
    _worker.clear()
    _worker.update(spec=spec, progress=progress)


def _setup() -> dict[str, Any]:
    if "players" in _worker:
        return _worker
    from hexsweep.devices import resolve_device
    from hexsweep.evaluate import GreedyNetPlayer
    from hexsweep.resources.assign import Want, hold
    from hexsweep.trainer import load_checkpoint

    spec = _worker["spec"]
    pool = spec["pool"]
    # the worker holds its slot (device, threads, MPS share) for its life; the kernel frees it
    held = hold(Want(device=str(pool["device"]), lock_dir=pool["resources"]["lock_dir"], parallel=spec["parallel"],
                     slots_per_gpu=pool["slots_per_gpu"], cpu_slots=pool["resources"]["cpu_slots"],
                     wait_timeout_s=spec["wait_timeout_s"],
                     describe={"experiment": "tournament", "job_dir": spec["out_dir"]}))
    slot = held.slot
    device = resolve_device(held.device)
    players: dict[str, Any] = {}
    for name, (kind, arg) in spec["players"].items():
        if kind == "net":
            model, _ = load_checkpoint(arg, device)
            players[name] = GreedyNetPlayer(model, device)
        elif kind == "shortest_path":
            players[name] = ShortestPathPlayer(float(arg), 0.0)
        else:
            players[name] = RandomPlayer()
    _worker.update(slot=slot, device=str(device), players=players)
    return _worker


def play_share(matches: list[Match]) -> tuple[str, list[GameRecord]]:
    """Play one worker's share of the games on its slot's device; (device, games)."""
    w = _setup()
    spec, progress = w["spec"], w["progress"]
    games = play(matches, w["players"], spec["board_size"], spec["seed"],
                 on_finished=progress.put if progress is not None else None)
    return w["device"], games


def colour_name(colour: int) -> str:
    return {BLACK: "black", WHITE: "white"}.get(colour, "none")
