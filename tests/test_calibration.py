"""Value-head calibration and policy detail: synthetic predictors with a known answer, then a real
tiny run whose objective is playing strength."""

import json

import numpy as np
import pytest

from hexsweep.atomic import read_jsonl
from hexsweep.calibration import STAGES, reliability, stage_of, value_detail
from hexsweep.errors import ConfigError
from hexsweep.lifecycle import train_job


def test_a_perfectly_calibrated_predictor_has_ece_about_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    won = rng.random(len(p)) < p  # the event happens with exactly the predicted probability
    curve = reliability(p, won)
    assert curve["ece"] < 0.005
    for pred, actual in zip(curve["predicted"], curve["actual"], strict=True):
        assert abs(pred - actual) < 0.01
    assert sum(curve["count"]) == len(p) and len(curve["edges"]) == 11
    # an overconfident predictor (the same outcomes, probabilities pushed to the extremes) is not
    overconfident = reliability(np.clip(0.5 + 2 * (p - 0.5), 0, 1), won)
    assert overconfident["ece"] > 0.1


def test_value_detail_by_stage_and_empty_bins():
    rng = np.random.default_rng(1)
    n = 7
    stones = rng.integers(0, 30, 5000)
    target = np.where(rng.random(5000) < 0.5, 1.0, -1.0)
    # right in late positions, a coin flip early: the stages must show it
    pred = np.where(stones >= 0.35 * n * n, 0.9 * target, rng.uniform(-0.1, 0.1, 5000))
    d = value_detail(pred, target, stones, n * n)
    assert d["val_value_acc_late"] == 1.0 and d["val_value_loss_late"] == pytest.approx(0.01)
    assert 0.4 < d["val_value_acc_early"] < 0.6 and d["val_value_loss_early"] > 0.9
    cal = d["val_calibration"]
    assert sum(cal["stage_positions"].values()) == 5000
    assert cal["stage_positions"]["early"] == int((stones < 0.15 * n * n).sum())
    assert None in cal["predicted"]  # no prediction in the 0.1-0.2 bin: an empty bin, not a NaN
    json.dumps(d, allow_nan=False)  # the curve is plain JSON
    assert [s for s, _, _ in STAGES] == ["early", "middle", "late"]
    assert list(stage_of(np.array([0, 7, 8, 17, 18, 49]), 49)) == [0, 0, 1, 1, 2, 2]


def test_strength_objective_and_detail_metrics_in_a_real_run(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="objective.direction='minimize' is invalid: allowed 'maximize'"):
        tiny_cfg("objective.metric=strength")
    with pytest.raises(ConfigError, match="strength.games=0 is invalid"):
        tiny_cfg("objective.metric=strength", "objective.direction=maximize", "strength.games=0")
    cfg = tiny_cfg("objective.metric=strength", "objective.direction=maximize", "strength.games=6",
                   "optim.lr=3e-3")
    r = train_job(cfg, tmp_path / "job")
    rows = read_jsonl(tmp_path / "job" / "metrics.jsonl")
    assert r.status == "completed" and all(0 <= row["strength"] <= 1 for row in rows)
    assert (r.objective.metric, r.objective.direction, r.value) == (
        "strength", "maximize", max(row["strength"] for row in rows))
    # the final check replays the same games with the restored best weights
    assert r.strength["win_rate_vs_generator"] == r.value
    for row in rows:  # every epoch: top-k accuracy, entropy, calibration, stages
        assert row["val_policy_acc"] <= row["val_policy_top3_acc"] <= row["val_policy_top5_acc"] <= 1
        assert 0 < row["val_policy_entropy"] < np.log(25)
        assert 0 <= row["val_value_ece"] <= 1
        for stage in ("early", "middle", "late"):
            assert 0 <= row[f"val_value_acc_{stage}"] <= 1 and row[f"val_value_loss_{stage}"] >= 0
    best = json.loads((tmp_path / "job" / "result.json").read_text())["best"]
    assert sum(best["val_calibration"]["count"]) == r.data["val_positions"]
    assert best["val_value_ece"] == best["val_calibration"]["ece"]


def test_reliability_bins_as_scipy_binned_statistic():
    from scipy import stats

    rng = np.random.default_rng(3)
    edges = np.round(np.linspace(0.0, 1.0, 11), 9)
    # random predictions, every edge exactly (0.3 opens its bin, 1.0 closes the last), and empty bins
    prob = np.concatenate([rng.random(500), edges, edges, rng.random(20) * 0.2])
    won = (rng.random(len(prob)) < prob).astype(float)
    curve = reliability(prob, won)
    count, _, _ = stats.binned_statistic(prob, prob, "count", bins=edges)
    predicted, _, _ = stats.binned_statistic(prob, prob, "mean", bins=edges)
    actual, _, _ = stats.binned_statistic(prob, won, "mean", bins=edges)
    assert curve["count"] == count.astype(int).tolist()
    assert curve["predicted"] == [None if c == 0 else float(p) for c, p in zip(count, predicted, strict=True)]
    assert curve["actual"] == [None if c == 0 else float(a) for c, a in zip(count, actual, strict=True)]
    sparse = reliability(np.array([0.05, 0.95, 1.0]), np.array([0.0, 1.0, 1.0]))
    assert sparse["count"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2] and sparse["predicted"][1] is None
