"""Seeds and confidence: intervals against scipy on fixed numbers, verdicts, seeds needed, the
command that runs them, the report's section and plot; the Elo fit on known ratings."""

import json
import math
import shlex

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hexsweep.report.aggregate import aggregate
from hexsweep.report.files import write_report
from hexsweep.report.stats import (
    fit_elo,
    group_stats,
    more_seeds_command,
    seeds_needed,
    t_power,
    welch_interval,
)

A = [1.101, 1.094, 1.112, 1.098]
B = [1.118, 1.109, 1.125]


def test_welch_difference_interval_is_scipys():
    diff, low, high = welch_interval(len(B), np.mean(B), np.var(B, ddof=1), len(A), np.mean(A), np.var(A, ddof=1))
    ref = stats.ttest_ind(B, A, equal_var=False).confidence_interval(0.95)
    assert float(diff) == pytest.approx(np.mean(B) - np.mean(A))
    assert (float(low), float(high)) == pytest.approx((ref.low, ref.high), rel=1e-10)


def _rows(groups: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"group": g, "objective": v} for g, vals in groups.items() for v in vals])


def test_group_table_intervals_and_verdicts():
    table = group_stats(_rows({"a": A, "b": B, "c": [1.3, 1.31, 1.29]}), "minimize")
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["a", "verdict"] == "best"
    ref = stats.ttest_1samp(B, 0).confidence_interval(0.95)
    assert (table.loc["b", "ci_low"], table.loc["b", "ci_high"]) == pytest.approx((ref.low, ref.high))
    welch = stats.ttest_ind(B, A, equal_var=False).confidence_interval(0.95)
    assert (table.loc["b", "diff_low"], table.loc["b", "diff_high"]) == pytest.approx((welch.low, welch.high))
    assert table.loc["c", "verdict"] == "worse"
    # maximising turns the same numbers around: c is the best, a and b clearly worse
    flipped = group_stats(_rows({"a": A, "b": B, "c": [1.3, 1.31, 1.29]}), "maximize")
    assert flipped.index[0] == "c" and set(flipped["verdict"][1:]) == {"worse"}


def test_identical_data_is_not_distinguishable():
    table = group_stats(_rows({"x": A[:3], "y": A[:3]}), "minimize")
    assert table.iloc[1]["verdict"] == "not distinguishable with 3 seeds"
    assert table.iloc[1]["diff"] == 0 and table.iloc[1]["diff_low"] < 0 < table.iloc[1]["diff_high"]
    assert pd.isna(table.iloc[1]["seeds_needed"])  # no difference: no number of seeds separates them
    one_seed = group_stats(_rows({"x": [1.0], "y": [1.1]}), "minimize")
    assert one_seed.iloc[1]["verdict"] == "not distinguishable with 1 seed"


def test_seeds_needed_reaches_the_power_and_fewer_do_not():
    n = seeds_needed(0.01, 0.012)
    assert t_power(0.01, 0.012, n) >= 0.8 > t_power(0.01, 0.012, n - 1)
    # cross-check one value with scipy's noncentral t directly
    df, nc = 2 * n - 2, 0.01 / (0.012 * math.sqrt(2 / n))
    crit = stats.t.ppf(0.975, df)
    assert stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) == pytest.approx(float(t_power(0.01, 0.012, n)))
    assert seeds_needed(0.0, 0.01) is None and seeds_needed(1e-6, 1.0) is None
    close = group_stats(_rows({"a": A, "b": [1.104, 1.099, 1.108]}), "minimize")
    assert close.iloc[1]["verdict"].startswith("not distinguishable") and close.iloc[1]["seeds_needed"] > 3


def test_more_seeds_command_extends_the_sweep_into_its_folder(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"command": [
        "/x/hexsweep/train.py", "-m", "seed=0,1,2", "experiment=glob(*)", "trainer.epochs=3"]}))
    cmd = more_seeds_command(tmp_path, 8)
    assert shlex.split(cmd) == ["python", "-m", "hexsweep.train", "-m", "seed=0,1,2,3,4,5,6,7",
                                "experiment=glob(*)", "trainer.epochs=3", f"hydra.sweep.dir={tmp_path}",
                                "resume=true"]
    (tmp_path / "sweep.json").write_text(json.dumps({"command": ["/x/hexsweep/train.py", "-m",
                                                                 "experiment=a,b", "hydra.sweep.dir=old"]}))
    assert shlex.split(more_seeds_command(tmp_path, 3))[4:6] == ["seed=0,1,2", "experiment=a,b"]
    (tmp_path / "sweep.json").write_text(json.dumps({"command": ["/x/hexsweep/train.py", "-m", "search=hex_tpe"]}))
    assert more_seeds_command(tmp_path, 3) is None


def _job(root, num, objective, experiment, seed):
    job = root / str(num)
    job.mkdir(parents=True)
    job.joinpath("result.json").write_text(json.dumps({
        "status": "completed", "experiment": experiment, "overrides": [f"experiment={experiment}", f"seed={seed}"],
        "objective": {"metric": "val_objective", "direction": "minimize", "value": objective},
        "best": {"val_objective": objective}, "final": {"val_objective": objective}, "epochs_run": 2}))


def test_report_has_intervals_verdicts_and_the_command(tmp_path):
    sweep = tmp_path / "sweep"
    values = {"balanced_weights": [1.101, 1.094, 1.112], "policy_heavy": [1.104, 1.099, 1.108],
              "balanced_high_lr": [1.20, 1.21, 1.19]}
    num = 0
    for seed in range(3):
        for exp, vals in values.items():
            _job(sweep, num, vals[seed], exp, seed)
            num += 1
    (sweep / "sweep.json").write_text(json.dumps({"command": ["/x/hexsweep/train.py", "-m", "seed=0,1,2",
                                                              "experiment=" + ",".join(values)]}))
    summary = write_report(aggregate([sweep]), sweep, [sweep])
    groups = summary["groups"]
    assert groups["experiment=balanced_weights"]["verdict"] == "best"
    assert groups["experiment=balanced_high_lr"]["verdict"] == "worse"
    assert groups["experiment=policy_heavy"]["verdict"] == "not distinguishable with 3 seeds"
    comparison = summary["comparison"]
    assert comparison["runner_up"] == "experiment=policy_heavy" and comparison["seeds_needed"] > 3
    assert comparison["command"].endswith(f"hydra.sweep.dir={sweep} resume=true")
    report = (sweep / "report.md").read_text()
    assert "95% CI" in report and "not distinguishable with 3 seeds" in report
    assert comparison["command"] in report
    assert (sweep / "by_experiment.png").stat().st_size > 10_000


def test_elo_recovers_known_ratings_with_a_first_move_advantage():
    rng = np.random.default_rng(0)
    truth = {"random": 0.0, "a": 300.0, "b": 500.0, "c": 520.0}
    h = 60.0
    black, white, won = [], [], []
    names = list(truth)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            for colour in range(2):
                bl, wh = (p, q) if colour == 0 else (q, p)
                prob = 1 / (1 + 10 ** (-(truth[bl] - truth[wh] + h) / 400))
                outcomes = rng.random(400) < prob
                black += [bl] * 400
                white += [wh] * 400
                won += list(outcomes)
    fit = fit_elo(black, white, won, anchor="random")
    est = dict(zip(fit.players, fit.elo, strict=True))
    assert est["random"] == 0 and fit.se[fit.players.index("random")] == 0
    for p in ("a", "b", "c"):
        i = fit.players.index(p)
        assert fit.low[i] < est[p] < fit.high[i]
        assert abs(est[p] - truth[p]) < 3 * fit.se[i]
    assert est["a"] < est["b"] and abs(fit.first_move - h) < 3 * fit.first_move_se
    d, low, high = fit.difference("c", "b")
    assert low < 20 < high and high - low < 2 * 1.96 * (fit.se[fit.players.index("c")] + fit.se[fit.players.index("b")])


def test_two_player_elo_interval_is_the_binomial_one():
    """Two players, colours balanced, no virtual draws: the rating is 400*log10(p/(1-p)) with the
    delta-method interval z*400/ln10/sqrt(N p (1-p)) (scipy's normal quantile)."""
    black = ["a", "b"] * 50
    white = ["b", "a"] * 50
    won = [True, False] * 35 + [False, True] * 15  # a wins 70 of 100, 35 as black, 35 as white
    fit = fit_elo(black, white, won, anchor="b", prior_draws=0)
    p = 0.7
    i = fit.players.index("a")
    assert fit.elo[i] == pytest.approx(400 * math.log10(p / (1 - p)), rel=1e-6)
    half = stats.norm.ppf(0.975) * 400 / math.log(10) / math.sqrt(100 * p * (1 - p))
    assert (fit.low[i], fit.high[i]) == pytest.approx((fit.elo[i] - half, fit.elo[i] + half), rel=1e-6)
    assert fit.first_move == pytest.approx(0, abs=1e-6)
