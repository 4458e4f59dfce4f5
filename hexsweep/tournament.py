"""A tournament of a sweep's best checkpoints:
``python -m hexsweep.tournament <sweep folder> [--top K] [--games N] [--workers W]``.

The ``best.pt`` of the top K jobs (by the sweep's objective) play each other and two reference
players, the generator's shortest-path player (sampling at the jobs' ``data.temperature``, no
random moves) and uniform random, in a round robin: N games per pairing, N/2 balanced
openings each played twice with the colours swapped (hexsweep/arena.py). Networks play their
greedy policy.

Games run in W worker processes (default: the slots of the machine's pool, at most one per
pairing); each worker holds a slot of the same pool as training jobs (a running sweep and a
tournament share the GPUs instead of colliding), plays its pairings batched on that slot's
device, and reports finished games to the progress bar.

Into ``<sweep>/tournament/``: ``games.trmph`` (one game a line, readable by
``python -m hexsweep.data.import_trmph``), ``games.csv`` (who played which line), ``results.csv``
(per pairing), ``elo.csv`` and ``tournament.json`` (maximum-likelihood Bradley-Terry Elo with
95% intervals and a first-player-advantage term, the random player at 0; report/stats.py) and
``elo.png``. The sweep's report then gains a tournament section. A warning says when the games
are too few to separate the two best jobs, and about how many would.
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from hexsweep import arena
from hexsweep.arena import Match, TournamentError
from hexsweep.atomic import atomic_write, atomic_write_json, atomic_write_text
from hexsweep.cli import fail
from hexsweep.errors import HexsweepError
from hexsweep.jobfolder import read_result
from hexsweep.report.aggregate import OK, aggregate
from hexsweep.report.files import TOURNAMENT_DIR, plot_elo, ranked, tournament_text, write_report
from hexsweep.report.stats import fit_elo, games_to_separate, round_robin
from hexsweep.resources.assign import default_parallel

ANCHOR = "random"
REFERENCE = "shortest_path"
MAX_GAMES = 2000  # per pairing: past this, "play more games" is not an answer


def race_survivor_jobs(sweep: Path) -> set[str]:
    """The job folders of the configurations a race (``search=race``) kept, from its race.json."""
    import json

    try:
        race = json.loads((sweep / "race.json").read_text())
        kept = {i for i, c in enumerate(race["configs"]) if not c["eliminated"]}
        return {str(Path(j["job_dir"]).resolve()) for j in race["jobs"] if j["config"] in kept and j.get("job_dir")}
    except FileNotFoundError:
        raise TournamentError(f"--survivors: {sweep} holds no race (race.json; search=race writes it)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TournamentError(f"--survivors: {sweep / 'race.json'} cannot be read: {e}") from None


def select_jobs(sweep: Path, top: int, survivors: bool = False) -> tuple[pd.DataFrame, str, list[str]]:
    """The ``top`` best finished jobs of the sweep whose ``best.pt`` loads, best first; and why each
    better job's best.pt was skipped (damaged, truncated, foreign: it cannot play). With
    ``survivors``: the best job of each configuration a race kept (one network per configuration)."""
    from hexsweep.trainer import CheckpointError, load_checkpoint  # torch: only once there is a sweep

    df = aggregate([sweep])
    if df.empty:
        raise TournamentError(f"no job folders in {sweep}: give a sweep folder (outputs/multirun/<date>/<time>)")
    df, direction = ranked(df)
    ok = df[df["status"].isin(OK) & df["objective"].notna()] if "objective" in df else df.iloc[0:0]
    ok = ok[[(Path(d) / "best.pt").exists() for d in ok["job_dir"]]]
    if ok.empty:
        raise TournamentError(f"no finished job with a best.pt in {sweep} (trainer.checkpoints=true writes it)")
    if survivors:
        kept = race_survivor_jobs(sweep)
        ok = ok[[str(Path(d).resolve()) in kept for d in ok["job_dir"]]].drop_duplicates("group")
        if ok.empty:
            raise TournamentError("--survivors: no job of the race's surviving configurations has a best.pt "
                                  f"in {sweep}")
    chosen, skipped = [], []
    for i, row in enumerate(ok.itertuples()):
        if len(chosen) == top:
            break
        try:
            load_checkpoint(Path(row.job_dir) / "best.pt")
            chosen.append(i)
        except CheckpointError as e:
            skipped.append(f"{player_label(row)} skipped: {e}")
    if not chosen:
        raise TournamentError(skipped[0] if len(skipped) == 1 else
                              f"no usable best.pt in {sweep}: {len(skipped)} skipped, the first: {skipped[0]}")
    return ok.iloc[chosen], direction, skipped


def player_name(row: Any) -> str:
    """A job's name in the tables: job<num> in a sweep, its folder's name among single runs."""
    return f"job{int(row.job_num)}" if has_num(row) else Path(row.job_dir).name


def player_label(row: Any) -> str:
    return f"job {int(row.job_num)}: {row.label}" if has_num(row) else f"run {Path(row.job_dir).name}: {row.label}"


def has_num(row: Any) -> bool:
    """Whether the row is a sweep's job (single runs, outputs/runs/<date>/<time>, have no number)."""
    return row.job_num is not None and not pd.isna(row.job_num)


def pool_spec(sweep: Path, config: dict[str, Any], parallel: int) -> dict[str, Any]:
    """What a worker needs to take a slot of the sweep's own pool."""
    resources = config.get("resources") or {}
    lock_dir = Path(str(resources.get("lock_dir") or "outputs/.locks"))
    outputs = str((config.get("paths") or {}).get("outputs") or "outputs")
    if not lock_dir.is_absolute() and len(sweep.parents) > 2 and sweep.parents[1].name == "multirun" \
            and lock_dir.parts[:len(Path(outputs).parts)] == Path(outputs).parts:
        # a relative outputs root means the folder the sweep was started in: the one above multirun/
        lock_dir = sweep.parents[2].joinpath(*lock_dir.parts[len(Path(outputs).parts):])
    return {"device": config.get("device", "auto"), "slots_per_gpu": config.get("slots_per_gpu"),
            "resources": {"lock_dir": str(lock_dir.resolve()), "cpu_slots": resources.get("cpu_slots")},
            "parallel": parallel}


def default_workers(config: dict[str, Any], pairings: int) -> int:
    return default_parallel(config.get("device", "auto"), config.get("slots_per_gpu"), pairings)


def run_games(spec: dict[str, Any], shares: list[list[Match]], total: int, progress: bool) -> tuple[
        list[arena.GameRecord], set[str]]:
    """Play the shares in worker processes from a forkserver (never a fork of this process)."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["hexsweep.arena", "hexsweep.evaluate", "hexsweep.trainer"])
    finished = ctx.Queue()
    games: list[arena.GameRecord] = []
    devices: set[str] = set()
    try:
        with ProcessPoolExecutor(len(shares), mp_context=ctx, initializer=arena.init_worker,
                                 initargs=(spec, finished)) as pool, \
                tqdm(total=total, unit="game", desc="tournament", disable=not progress, file=sys.stderr) as bar:
            pending = {pool.submit(arena.play_share, share) for share in shares}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(finished, bar)
                for future in done:
                    device, played = future.result()
                    devices.add(device)
                    games.extend(played)
            _drain(finished, bar)
            bar.update(total - bar.n)
    except BrokenProcessPool as e:
        raise TournamentError(f"a tournament worker died ({e}); its games are lost: run it again") from None
    return sorted(games, key=lambda g: g.match.index), devices


def _drain(finished: Any, bar: Any) -> None:
    while True:
        try:
            bar.update(finished.get_nowait())
        except queue.Empty:
            return


def tables(games: list[arena.GameRecord], labels: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per game, one row per pairing)."""
    rows = pd.DataFrame([{"game": i, "line": i + 1, "pairing": g.match.pairing, "black": g.match.black,
                          "white": g.match.white, "opening": " ".join(map(str, g.match.opening)),
                          "winner": g.match.black if g.black_won else g.match.white,
                          "black_won": g.black_won, "plies": len(g.moves)} for i, g in enumerate(games)])
    pairs = []
    for _, p in rows.groupby("pairing", sort=True):
        a, b = p["black"].iloc[0], p["white"].iloc[0]
        a_black, b_black = p[p["black"] == a], p[p["black"] == b]
        a_wins_black = int((a_black["winner"] == a).sum())
        a_wins_white = int((b_black["winner"] == a).sum())
        pairs.append({"a": a, "b": b, "a_label": labels[a], "b_label": labels[b], "games": len(p),
                      "a_wins": a_wins_black + a_wins_white, "a_wins_as_black": a_wins_black,
                      "a_wins_as_white": a_wins_white, "a_score": (a_wins_black + a_wins_white) / len(p),
                      "black_wins": int(p["black_won"].sum())})
    return rows, pd.DataFrame(pairs)


def run_tournament(sweep: Path, top: int = 4, games: int = 20, workers: int | None = None, seed: int = 0,
                   prior_draws: float = 1.0, progress: bool = True, survivors: bool = False) -> dict[str, Any]:
    """Play, rate and write the tournament of ``sweep``; returns tournament.json's content."""
    if games < 2 or games % 2:
        raise TournamentError(f"--games {games} is invalid: allowed an even integer >= 2 (each opening is "
                              "played twice, colours swapped)")
    if top < 1:
        raise TournamentError(f"--top {top} is invalid: allowed an integer >= 1")
    if workers is not None and workers < 1:
        raise TournamentError(f"--workers {workers} is invalid: allowed an integer >= 1")
    jobs, direction, skipped = select_jobs(sweep, top, survivors)
    for line in skipped:
        print(f"hexsweep: warning: {line}", file=sys.stderr)
    results = [read_result(row.job_dir) for row in jobs.itertuples()]
    config = next((r.config for r in results if r and r.config is not None), {})
    sizes = {((r.data if r else None) or {}).get("board_size") for r in results}
    if len(sizes) != 1 or None in sizes:
        raise TournamentError(f"the top jobs play on different or unknown board sizes ({sorted(map(str, sizes))}): "
                              "a tournament needs one board size")
    n = int(sizes.pop())
    temperature = float((config.get("data") or {}).get("temperature", 0.25))
    players: dict[str, tuple[str, Any]] = {}
    labels, info = {}, []
    for row in jobs.itertuples():
        name = player_name(row)
        players[name] = ("net", str(Path(row.job_dir) / "best.pt"))
        labels[name] = player_label(row)
        info.append({"name": name, "kind": "job", "label": labels[name],
                     "job_num": int(row.job_num) if has_num(row) else None,
                     "job_dir": row.job_dir, "objective": float(row.objective)})
    players[REFERENCE] = ("shortest_path", temperature)
    players[ANCHOR] = ("random", None)
    labels[REFERENCE] = f"shortest-path player (the generator, T={temperature:g})"
    labels[ANCHOR] = "uniform random"
    info += [{"name": REFERENCE, "kind": "reference", "label": labels[REFERENCE]},
             {"name": ANCHOR, "kind": "reference", "label": labels[ANCHOR]}]
    openings, balance = arena.balanced_openings(n, games // 2, temperature, seed)
    pairings = round_robin(list(players))
    matches = []
    for p, (a, b) in enumerate(pairings):
        for opening in openings:
            for black, white in ((a, b), (b, a)):
                matches.append(Match(len(matches), p, black, white, opening))
    w = workers or default_workers(config, len(pairings))
    w = min(w, len(pairings))
    shares = [[m for m in matches if m.pairing % w == k] for k in range(w)]
    out_dir = sweep / TOURNAMENT_DIR
    spec = {"pool": pool_spec(sweep, config, w), "parallel": w, "players": players, "board_size": n,
            "seed": seed, "out_dir": str(out_dir),
            "wait_timeout_s": float((config.get("resources") or {}).get("wait_timeout_s", 3600.0))}
    played, devices = run_games(spec, shares, len(matches), progress)
    rows, pairs = tables(played, labels)
    fit = fit_elo(list(rows["black"]), list(rows["white"]), rows["black_won"].to_numpy(), ANCHOR, prior_draws)
    kinds = {p["name"]: p["kind"] for p in info}
    elo = []
    for i in sorted(range(len(fit.players)), key=lambda i: -fit.elo[i]):
        name = fit.players[i]
        mine = rows[(rows["black"] == name) | (rows["white"] == name)]
        wins = int((mine["winner"] == name).sum())
        elo.append({"player": name, "label": labels[name], "kind": kinds[name], "elo": float(fit.elo[i]),
                    "elo_low": float(fit.low[i]), "elo_high": float(fit.high[i]), "se": float(fit.se[i]),
                    "games": len(mine), "wins": wins, "score": wins / len(mine)})
    first = {"elo": fit.first_move, "low": fit.first_move - fit.z * fit.first_move_se,
             "high": fit.first_move + fit.z * fit.first_move_se, "se": fit.first_move_se}
    warnings = separation_warnings(fit, elo, games)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "games.trmph", "".join(arena.trmph_line(n, g.moves, g.winner) + "\n" for g in played))
    atomic_write(out_dir / "games.csv", lambda f: rows.to_csv(f, index=False))
    atomic_write(out_dir / "results.csv", lambda f: pairs.to_csv(f, index=False))
    atomic_write(out_dir / "elo.csv", lambda f: pd.DataFrame(elo).to_csv(f, index=False))
    summary = {
        "sweep": str(sweep), "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "board_size": n, "top": top, "games_per_pairing": games, "games": len(played), "seed": seed,
        "objective_direction": direction, "anchor": ANCHOR, "prior_draws": prior_draws,
        "workers": w, "devices": sorted(devices), "players": info,
        "openings": [{"moves": list(o), "first_player_win_rate_in_probe": r} for o, r in
                     zip(openings, balance, strict=True)],
        "elo": elo, "first_move": first, "pairings": pairs.to_dict(orient="records"),
        "warnings": skipped + warnings,
    }
    atomic_write_json(out_dir / "tournament.json", summary)
    plot_elo(elo, first, games, out_dir / "elo.png")
    write_report(aggregate([sweep]), sweep, [sweep])
    return summary


def separation_warnings(fit: Any, elo: list[dict[str, Any]], games: int) -> list[str]:
    """Warn when the two best jobs' Elo difference interval includes 0."""
    top_jobs = [e for e in elo if e["kind"] == "job"][:2]
    if len(top_jobs) < 2:
        return []
    a, b = top_jobs
    d, low, high = fit.difference(a["player"], b["player"])
    if low > 0:
        return []
    need = games_to_separate(fit, a["player"], b["player"], games)
    if need is None:
        more = "; no number of games would, at this difference"
    elif need > MAX_GAMES:
        more = f"; more than {MAX_GAMES} games per pairing would be needed: for practical purposes equally strong"
    else:
        more = f"; about {need} games per pairing would probably separate them (--games {need})"
    return [f"{games} games per pairing are too few to separate the two best jobs: {a['label']} leads "
            f"{b['label']} by {d:.0f} Elo [{low:.0f}, {high:.0f}]{more}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.tournament", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep folder (outputs/multirun/<date>/<time>)")
    parser.add_argument("--top", type=int, default=4, help="how many of the best jobs play (default 4)")
    parser.add_argument("--games", type=int, default=20, help="games per pairing, even (default 20)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the slots of the pool, at most one per pairing)")
    parser.add_argument("--seed", type=int, default=0, help="openings and the reference players' moves")
    parser.add_argument("--prior-draws", type=float, default=1.0,
                        help="virtual drawn games per pairing in the Elo fit (keeps a clean sweep finite)")
    parser.add_argument("--survivors", action="store_true",
                        help="after a race (search=race): the best job of each configuration it kept (at most --top)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        fail(f"{args.sweep} is not a folder: give a sweep folder such as outputs/multirun/<date>/<time>")
    if not (math.isfinite(args.prior_draws) and args.prior_draws >= 0):
        fail(f"--prior-draws {args.prior_draws} is invalid: allowed a number >= 0")
    try:
        t = run_tournament(args.sweep.resolve(), args.top, args.games, args.workers, args.seed, args.prior_draws,
                           progress=not args.no_progress, survivors=args.survivors)
    except HexsweepError as e:
        fail(str(e))
    print(tournament_text(t))
    out = Path(t["sweep"]) / TOURNAMENT_DIR
    print(f"games: {out / 'games.trmph'}  table: {out / 'results.csv'}  report: {Path(t['sweep']) / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())
