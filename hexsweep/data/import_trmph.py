"""Import real game records: ``python -m hexsweep.data.import_trmph <files or folders> --out DIR``.

A ``.trmph`` file holds one game a line::

    http://www.trmph.com/hex/board#13,a1b2c3 1

board size, then the moves (column letter a.., row number 1..; a1 is the top-left cell),
then the winner: 1 = the first player (BLACK, top-bottom), 2 = the second (WHITE,
left-right). Blank lines and lines starting with ``#`` are ignored.

Malformed lines are **skipped with a count and a warning** naming the first few by
file:line and reason (``--strict`` rejects the import at the first one instead). A line is
malformed when it does not parse, a move is off the board or on an occupied cell, the
game goes on after someone connected, the declared winner contradicts a finished
board, or its board size differs from the import's (``--board-size``, default: the first
valid line's). The result is a dataset folder in the shard format of
hexsweep/data/shards.py; train with ``data.path=<DIR> data.board_size=<n>``.

``--out`` may name a new folder, an empty one or an earlier hexsweep dataset (recognised by
its meta.json), which is replaced whole once the new one is complete. Any other existing
folder is refused unless ``--force`` is given; a folder that is or holds an input is never
replaced.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hexsweep.cli import fail
from hexsweep.data.generate import split_games
from hexsweep.data.shards import Game, check_replaceable, write_dataset
from hexsweep.errors import DataError, HexsweepError, IllegalMoveError
from hexsweep.hex.board import MAX_SIZE, MIN_SIZE, Board

LINE_RE = re.compile(r"^(?:https?://)?(?:www\.)?trmph\.com/hex/board#(\d+),([a-z0-9]*)\s+(\S+)$")
MOVE_RE = re.compile(r"([a-z])(\d{1,2})")


class MalformedLine(HexsweepError):
    """One record that cannot be imported; the message says why."""


@dataclass
class ImportReport:
    games: list[dict[str, np.ndarray]] = field(default_factory=list)
    board_size: int | None = None
    lines: int = 0
    skipped: list[str] = field(default_factory=list)


def parse_line(line: str, board_size: int | None) -> tuple[int, list[int], int]:
    """-> (n, moves as cell indices, winner); raises MalformedLine."""
    m = LINE_RE.match(line.strip())
    if not m:
        raise MalformedLine("not '<trmph url>#<size>,<moves> <winner 1|2>'")
    n, move_text, winner_text = int(m.group(1)), m.group(2), m.group(3)
    if not MIN_SIZE <= n <= MAX_SIZE:
        raise MalformedLine(f"board size {n} out of range {MIN_SIZE}..{MAX_SIZE}")
    if board_size is not None and n != board_size:
        raise MalformedLine(f"board size {n} differs from the import's {board_size}")
    if winner_text not in ("1", "2"):
        raise MalformedLine(f"winner {winner_text!r}: allowed 1 or 2")
    tokens = MOVE_RE.findall(move_text)
    if "".join(c + r for c, r in tokens) != move_text:
        raise MalformedLine(f"cannot split moves {move_text!r} into <letter><number> cells")
    moves = []
    for col_letter, row_text in tokens:
        col, row = ord(col_letter) - ord("a"), int(row_text) - 1
        if not (0 <= col < n and 0 <= row < n):
            raise MalformedLine(f"move {col_letter}{row_text} is off the {n}x{n} board")
        moves.append(row * n + col)
    return n, moves, int(winner_text)


def replay(n: int, moves: list[int], winner: int) -> dict[str, np.ndarray]:
    board = Board(n)
    game = Game()
    for i, move in enumerate(moves):
        if board.done:
            raise MalformedLine(f"move {i + 1} comes after the game was already won")
        grid, mover = board.grid(), board.to_move
        try:
            board.play(move)
        except IllegalMoveError:
            raise MalformedLine(f"move {i + 1}: {board.cell_name(move)} is occupied") from None
        game.add(grid, mover, move)
    if board.done and board.winner != winner:
        raise MalformedLine(f"declared winner {winner} but player {board.winner} connected")
    game.add(board.grid(), board.to_move, -1)
    game.winner = winner
    return game.arrays(0)


def trmph_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.trmph")))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist: give .trmph files or folders holding them")
    if not files:
        raise DataError(f"no .trmph files found in {', '.join(paths)}")
    return files


def read_games(files: list[Path], board_size: int | None, strict: bool) -> ImportReport:
    report = ImportReport(board_size=board_size)
    for path in files:
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            report.lines += 1
            try:
                n, moves, winner = parse_line(line, report.board_size)
                arrays = replay(n, moves, winner)
            except MalformedLine as e:
                where = f"{path}:{lineno}: {e}"
                if strict:
                    raise DataError(f"malformed record at {where}") from None
                report.skipped.append(where)
                continue
            report.board_size = n
            arrays["game"][:] = len(report.games)
            report.games.append(arrays)
    return report


def import_trmph(paths: list[str], out: Path, board_size: int | None = None, val_fraction: float = 0.1,
                 seed: int = 0, strict: bool = False, shard_size: int = 100_000,
                 force: bool = False) -> tuple[dict, ImportReport]:
    """Import ``paths`` into the dataset folder ``out`` (replaced only as shards.check_replaceable allows)."""
    files = trmph_files(paths)
    protect = [Path(p) for p in paths] + files  # the inputs are never deleted, not even with force
    check_replaceable(out, force, protect)  # before the parsing work
    report = read_games(files, board_size, strict)
    if not report.games:
        raise DataError(f"no valid game in {report.lines} records ({len(report.skipped)} malformed)")
    if len(report.games) < 2:
        raise DataError(f"only 1 valid game in {report.lines} records: a dataset needs at least 2 "
                        "(one for each of the train and val splits)")
    val = split_games(len(report.games), val_fraction, seed)
    source = {"source": "trmph", "files": [str(p) for p in paths], "records": report.lines,
              "skipped": len(report.skipped), "val_fraction": val_fraction, "seed": seed}
    meta = write_dataset(out, report.board_size, report.games, val, source, shard_size, force, protect)
    return meta, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.data.import_trmph", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help=".trmph files or folders (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--board-size", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="reject the import at the first bad line")
    parser.add_argument("--force", action="store_true",
                        help="replace --out even if it is an existing folder that is not a hexsweep dataset")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction <= 0.5:
        parser.error(f"--val-fraction {args.val_fraction} is invalid: allowed a number in (0, 0.5]")
    try:
        meta, report = import_trmph(args.paths, args.out.resolve(), args.board_size, args.val_fraction,
                                    args.seed, args.strict, force=args.force)
    except HexsweepError as e:
        fail(str(e))
    if report.skipped:
        shown = "\n  ".join(report.skipped[:5])
        more = f"\n  ... and {len(report.skipped) - 5} more" if len(report.skipped) > 5 else ""
        print(f"warning: skipped {len(report.skipped)} of {report.lines} records as malformed:"
              f"\n  {shown}{more}", file=sys.stderr)
    s = meta["splits"]
    print(f"wrote {args.out}: {len(report.games)} games, {s['train']['positions']} train and "
          f"{s['val']['positions']} val positions, board {report.board_size}x{report.board_size}; "
          f"train with: python -m hexsweep.train data.path={args.out.resolve()} "
          f"data.board_size={report.board_size}")


if __name__ == "__main__":
    main()
