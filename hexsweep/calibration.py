"""Value-head calibration and error by game stage, from the validation predictions.

The value head's tanh output v estimates the mover's result (+1 win, -1 loss); trained with
squared error, (v + 1) / 2 estimates the mover's win probability. Two questions a single
value loss hides:

- **calibration**: of the positions given a 70% chance, does the mover win 70%? The
  reliability curve bins the predicted probability into ``BINS`` equal-width bins and
  compares each bin's mean prediction with its win rate; the expected calibration error
  (ECE) is the bin-size-weighted mean gap between the two.
- **game stage**: openings are harder to judge than finished fights. Positions are split
  by the stones on the board as a share of the cells: ``early`` below 15%, ``middle`` below
  35%, ``late`` from 35% on. Self-play games on 5x5 to 13x13 end around half-full, so each
  stage holds roughly a third of the positions.

``value_detail`` returns flat metrics (``val_value_ece``, ``val_value_loss_<stage>``,
``val_value_acc_<stage>``) and the curve under ``val_calibration``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BINS = 10
STAGES = (("early", 0.0, 0.15), ("middle", 0.15, 0.35), ("late", 0.35, 1.01))


def reliability(prob: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Per equal-width bin of the predicted probability: its count, mean prediction and the
    observed frequency of the outcome (None in an empty bin); plus the ECE."""
    prob, outcome = np.asarray(prob, float), np.asarray(outcome, float)
    finite = np.isfinite(prob)  # a diverged network predicts NaN: no curve from those
    prob, outcome = prob[finite], outcome[finite]
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 9)
    if len(prob) == 0:
        return {"edges": edges.tolist(), "count": [0] * bins, "predicted": [None] * bins,
                "actual": [None] * bins, "ece": math.nan}
    # Equal-width bins, as scipy.stats.binned_statistic counts and averages them (half-open bins, the
    # last one closed; sums by bincount, so the same floats) without its ~0.7 s import, which every
    # sweep's job server paid before its first job could start
    clipped = np.clip(prob, 0.0, 1.0)
    index = np.digitize(clipped, edges) - 1
    index[clipped == edges[-1]] = bins - 1
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty bin: NaN, masked below
        predicted = np.bincount(index, weights=clipped, minlength=bins) / count
        actual = np.bincount(index, weights=outcome, minlength=bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(predicted[filled] - actual[filled])) / count.sum())
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(),
            "predicted": [float(p) if f else None for p, f in zip(predicted, filled, strict=True)],
            "actual": [float(a) if f else None for a, f in zip(actual, filled, strict=True)], "ece": ece}


def stage_of(stones: np.ndarray, cells: int) -> np.ndarray:
    """The stage index (0 early, 1 middle, 2 late) of each position."""
    share = np.asarray(stones, float) / cells
    bounds = [lo for _, lo, _ in STAGES[1:]]
    return np.searchsorted(bounds, share, side="right")


def value_detail(pred: np.ndarray, target: np.ndarray, stones: np.ndarray, cells: int,
                 prefix: str = "val") -> dict[str, Any]:
    """Calibration and per-stage error of value predictions ``pred`` in [-1, 1] against results
    ``target`` (+1/-1, the mover's), for positions with ``stones`` stones on ``cells`` cells."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    curve = reliability((pred + 1) / 2, (target + 1) / 2)
    out: dict[str, Any] = {f"{prefix}_value_ece": curve["ece"]}
    stage = stage_of(stones, cells)
    counts = {}
    for i, (name, _, _) in enumerate(STAGES):
        mask = stage == i
        counts[name] = int(mask.sum())
        p, t = pred[mask], target[mask]
        out[f"{prefix}_value_loss_{name}"] = float(np.mean((p - t) ** 2)) if mask.any() else math.nan
        out[f"{prefix}_value_acc_{name}"] = float(np.mean(np.sign(p) == t)) if mask.any() else math.nan
    out[f"{prefix}_calibration"] = {**curve, "stages": {name: [lo, min(hi, 1.0)] for name, lo, hi in STAGES},
                                    "stage_positions": counts}
    return out
