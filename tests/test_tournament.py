"""The tournament: batched games, openings, .trmph output, and a real one on debug=tiny checkpoints
where the trained networks must beat the random player."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_folder

from hexsweep.arena import Match, TournamentError, balanced_openings, play, trmph_line
from hexsweep.data.import_trmph import parse_line, replay
from hexsweep.hex.board import BLACK
from hexsweep.hex.players import RandomPlayer, ShortestPathPlayer
from hexsweep.lifecycle import train_job
from hexsweep.report.stats import fit_elo
from hexsweep.tournament import separation_warnings


def _matches(openings, pairings):
    out = []
    for p, (a, b) in enumerate(pairings):
        for o in openings:
            for black, white in ((a, b), (b, a)):
                out.append(Match(len(out), p, black, white, o))
    return out


def test_batched_games_are_legal_trmph_and_independent_of_sharing():
    players = {"sp": ShortestPathPlayer(0.25, 0.0), "rnd": RandomPlayer(), "rnd2": RandomPlayer()}
    openings, rates = balanced_openings(5, 4, 0.25, seed=0)
    assert len(set(openings)) == 4 and all(0 <= r <= 1 for r in rates)
    matches = _matches(openings, [("sp", "rnd"), ("rnd", "rnd2")])
    finished = []
    games = play(matches, players, 5, seed=3, on_finished=finished.append)
    assert sum(finished) == len(games) == 16
    for g in games:
        assert tuple(g.moves[:len(g.match.opening)]) == g.match.opening
        n, moves, winner = parse_line(trmph_line(5, g.moves, g.winner), None)
        replay(n, moves, winner)  # the importer accepts the line: legal moves, the declared winner connected
    sp_games = [g for g in games if "sp" in (g.match.black, g.match.white)]
    sp_wins = sum((g.winner == BLACK) == (g.match.black == "sp") for g in sp_games)
    assert sp_wins >= 7  # the generator's player beats random
    # each pairing draws from its own stream: the same games whichever worker plays which pairing
    alone = play([m for m in matches if m.pairing == 1], players, 5, seed=3)
    assert [g.moves for g in alone] == [g.moves for g in games if g.match.pairing == 1]
    with pytest.raises(TournamentError, match="allowed --games <= "):
        balanced_openings(3, 100, 0.25, seed=0)


def test_warning_when_games_cannot_separate_the_two_best_jobs():
    black = ["a", "b"] * 5 + ["a", "random", "b", "random"] * 5
    white = ["b", "a"] * 5 + ["random", "a", "random", "b"] * 5
    won = [True, False, False, True] * 2 + [True, False] + [True, False] * 10  # a-b even; both beat random
    fit = fit_elo(black, white, won, "random")
    elo = [{"player": p, "label": p, "kind": "job" if p != "random" else "reference"}
           for p in sorted(fit.players, key=lambda p: -fit.elo[fit.players.index(p)])]
    (warning,) = separation_warnings(fit, elo, games=10)
    assert "10 games per pairing are too few to separate the two best jobs" in warning


@pytest.fixture(scope="session")
def trained_sweep(tmp_path_factory, data_root, tiny_dataset):
    """A sweep folder with two finished tiny jobs: one trained 3 epochs, one 1 epoch (read only)."""
    from hexsweep.cli import compose

    def build(outputs):
        for num, extra in enumerate([["seed=0", "trainer.epochs=3", "optim.lr=3e-3"], ["seed=1", "trainer.epochs=1"]]):
            cfg = compose(["debug=tiny", "trainer.progress=off", f"paths.outputs={outputs}",
                           f"paths.data={data_root}", f"resources.lock_dir={outputs / 'locks'}", *extra])
            train_job(cfg, outputs / "sweep" / str(num), info={"experiment": "default", "overrides": extra,
                                                                 "job": {"name": "train", "num": num}})

    return shared_folder(tmp_path_factory, "tiny_sweep", build) / "sweep"


@pytest.fixture
def tiny_sweep(trained_sweep, tmp_path):
    """This test's copy of the trained sweep: the tournament and the report write into it."""
    return Path(shutil.copytree(trained_sweep, tmp_path / "sweep"))


@pytest.mark.slow
def test_tournament_of_tiny_checkpoints(tiny_sweep, tmp_path):
    out = subprocess.run([sys.executable, "-m", "hexsweep.tournament", str(tiny_sweep), "--top", "2", "--games", "8",
                          "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "tournament: 48 games, 8 per pairing, 5x5" in out.stdout and "first-move advantage" in out.stdout
    folder = tiny_sweep / "tournament"
    t = json.loads((folder / "tournament.json").read_text())
    assert t["games"] == 6 * 8 and t["workers"] == 2 and t["devices"] == ["cpu"]
    assert len({tuple(o["moves"]) for o in t["openings"]}) == 4
    elo = {e["player"]: e for e in t["elo"]}
    assert set(elo) == {"job0", "job1", "shortest_path", "random"}
    assert elo["random"]["elo"] == 0 == elo["random"]["elo_low"]
    for e in t["elo"]:
        assert e["elo_low"] <= e["elo"] <= e["elo_high"] and e["games"] == 24
    # the known stronger players: the trained network and the generator's player beat random
    pairs = pd.read_csv(folder / "results.csv").set_index(["a", "b"])
    assert pairs.loc[("job0", "random"), "a_score"] >= 0.75
    assert pairs.loc[("shortest_path", "random"), "a_score"] >= 0.75
    assert elo["job0"]["elo"] > 0 and elo["shortest_path"]["elo"] > 0
    assert t["elo"][-1]["player"] == "random"  # rated last
    # every game, one a line, as the importer reads it
    lines = (folder / "games.trmph").read_text().splitlines()
    assert len(lines) == 48 and len(pd.read_csv(folder / "games.csv")) == 48
    imported = subprocess.run([sys.executable, "-m", "hexsweep.data.import_trmph", str(folder / "games.trmph"),
                               "--out", str(tmp_path / "imported"), "--strict"], capture_output=True, text=True,
                              timeout=120)
    assert imported.returncode == 0, imported.stderr
    meta = json.loads((tmp_path / "imported" / "meta.json").read_text())
    assert meta["board_size"] == 5
    # the sweep's report and analyze show it
    report = (tiny_sweep / "report.md").read_text()
    assert "## Tournament" in report and "tournament/elo.png" in report
    assert (folder / "elo.png").stat().st_size > 10_000
    shown = subprocess.run([sys.executable, "-m", "hexsweep.analyze", str(tiny_sweep)], capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "first-move advantage" in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "hexsweep.tournament", str(tiny_sweep), "--games", "7"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "hexsweep: error: --games 7 is invalid: allowed an even integer >= 2 (each opening is played twice, "
        "colours swapped)")


def test_the_report_compares_the_calibration_of_the_best_jobs(tiny_sweep):
    from hexsweep.report.aggregate import aggregate
    from hexsweep.report.files import write_report

    summary = write_report(aggregate([tiny_sweep]), tiny_sweep, [tiny_sweep])
    assert [r["job_num"] for r in summary["detail"]] == [0, 1]
    assert all(0 <= r["value ECE"] <= 1 and r["top-1"] <= r["top-3"] <= r["top-5"] for r in summary["detail"])
    for png in ("calibration.png", "policy.png", "by_experiment.png"):
        assert (tiny_sweep / png).stat().st_size > 10_000
    df = pd.read_csv(tiny_sweep / "results.csv")
    assert np.all(df["best_val_policy_top5_acc"] >= df["best_val_policy_acc"])
    assert "## Value head and policy" in (tiny_sweep / "report.md").read_text()


@pytest.mark.slow
def test_a_tournament_of_single_runs_skips_damaged_checkpoints_by_name(trained_sweep, tmp_path):
    """A folder of single runs (no job numbers), two of whose best.pt are damaged: a pickle that
    torch's weights-only loader refuses (its message advises weights_only=False: never shown) and a
    truncated file (torch's OSError names no file). The valid one plays; the others are named."""
    runs = tmp_path / "runs" / "2026-01-01"
    names = {"10-00-00": "0", "10-00-01": "0", "10-00-02": "1"}
    for name, job in names.items():
        shutil.copytree(trained_sweep / job, runs / name, ignore=shutil.ignore_patterns("tournament"))
    foreign = runs / "10-00-00" / "best.pt"
    foreign.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    truncated = runs / "10-00-01" / "best.pt"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    out = subprocess.run([sys.executable, "-m", "hexsweep.tournament", str(runs), "--top", "3", "--games", "2",
                          "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    said = out.stdout + out.stderr
    assert "Traceback" not in said and "weights_only" not in said
    warned = [line for line in out.stderr.splitlines() if line.startswith("hexsweep: warning: run ")]
    assert len(warned) == 2
    assert warned[0].startswith("hexsweep: warning: run 10-00-00: ") and warned[0].endswith(
        f" skipped: {foreign} is damaged or not a hexsweep checkpoint: torch's weights-only loader refused its "
        "content")
    assert warned[1].startswith("hexsweep: warning: run 10-00-01: ") and warned[1].endswith(
        f" skipped: {truncated} cannot be read, truncated or damaged (Invalid argument)")
    t = json.loads((runs / "tournament" / "tournament.json").read_text())
    (played,) = [p for p in t["players"] if p["kind"] == "job"]
    assert played["name"] == "10-00-02" and played["job_num"] is None
    assert sum(str(foreign) in w for w in t["warnings"]) == 1  # the summary and report name them too

    # nothing left that can play: one line naming the bad checkpoint
    shutil.rmtree(runs / "10-00-00")
    shutil.rmtree(runs / "10-00-02")
    out = subprocess.run([sys.executable, "-m", "hexsweep.tournament", str(runs), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 2 and line.startswith("hexsweep: error: run 10-00-01: ")
    assert line.endswith(f" skipped: {truncated} cannot be read, truncated or damaged (Invalid argument)")
