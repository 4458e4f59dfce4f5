"""Which configuration is better: seeds, confidence intervals, seeds needed, Elo from games.

Every distribution comes from scipy; only the bookkeeping around it is ours. The report's
quantiles and probabilities are the ``scipy.special`` functions that scipy.stats itself calls
(``t.ppf`` is ``stdtrit``, ``nct.cdf`` is ``nctdtr``, ``norm.ppf`` is ``ndtri``; the noncentral
t's survival function is its cdf mirrored, the values scipy.stats gives): importing scipy.stats
costs about a second more, which every ``analyze`` and every sweep's report would wait for.
scipy.optimize (the Elo fit) loads only where used.

- ``group_stats``: per configuration (the overrides other than ``seed``) n, mean, standard
  deviation and the 95% t-interval of the objective; against the best configuration (best
  mean) the difference with its Welch interval and a verdict: "better", "worse" or "not
  distinguishable with n seeds"; and for the indistinguishable ones how many seeds per
  configuration would probably separate them (80% power of a two-sided two-sample t-test at
  the 5% level, taking the observed difference and spread as the truth).
- ``more_seeds_command``: the sweep's own command with ``seed=...`` extended, resumable into
  the same folder.
- ``fit_elo``: maximum-likelihood Bradley-Terry ratings on the Elo scale with a
  first-player-advantage term, fitted with scipy.optimize; intervals from the observed
  information (the inverse Hessian of the negative log-likelihood).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from hexsweep.errors import HexsweepError

CONFIDENCE = 0.95
POWER = 0.8
MAX_SEEDS = 1000  # past this, "more seeds" is not an answer
COMPARED = 50  # seeds-needed estimates for the closest configurations only (the report lists these)
ELO = 400 / math.log(10)  # Elo points per logit


class StatsError(HexsweepError):
    """The numbers cannot give an answer (no games between two groups of players, ...)."""


def welch_interval(n_a: Any, mean_a: Any, var_a: Any, n_b: Any, mean_b: Any, var_b: Any,
                   confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(difference a - b, low, high) of the Welch interval, vectorised over arrays of groups.

    NaN where a group has one value (no spread to judge by); a zero-width interval where both
    groups have no spread at all (deterministic jobs)."""
    n_a, n_b = np.asarray(n_a, float), np.asarray(n_b, float)
    va, vb = np.asarray(var_a, float) / n_a, np.asarray(var_b, float) / n_b
    diff = np.asarray(mean_a, float) - np.asarray(mean_b, float)
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
        half = np.where(se == 0, 0.0, special.stdtrit(df, 0.5 + confidence / 2) * se)
    half = np.where((n_a < 2) | (n_b < 2), np.nan, half)
    return diff, diff - half, diff + half


def verdict(diff: float, low: float, high: float, n_a: int, n_b: int, direction: str) -> str:
    """"better"/"worse" (a against b) when the interval excludes 0, else "not distinguishable"."""
    if math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0):
        higher = diff > 0
        return "better" if higher == (direction == "maximize") else "worse"
    seeds = f"{n_a} seed" + ("s" if n_a != 1 else "") if n_a == n_b else f"{n_a} and {n_b} seeds"
    return f"not distinguishable with {seeds}"


def t_power(diff: float, sd: float, n: Any, alpha: float = 1 - CONFIDENCE) -> np.ndarray:
    """Power of the two-sided two-sample t-test with ``n`` runs per configuration (noncentral t)."""
    n = np.asarray(n, dtype=float)
    df = 2 * n - 2
    nc = abs(diff) / (sd * np.sqrt(2 / n))
    crit = special.stdtrit(df, 1 - alpha / 2)
    return special.nctdtr(df, -nc, -crit) + special.nctdtr(df, nc, -crit)  # nct.sf(crit) + nct.cdf(-crit)


def seeds_needed(diff: float, sd: float, power: float = POWER, alpha: float = 1 - CONFIDENCE) -> int | None:
    """Seeds per configuration that would probably (``power``) separate two configurations whose
    means differ by ``diff`` with spread ``sd``; None when no number of seeds would (no
    difference, no spread measured) or more than MAX_SEEDS would be needed."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or diff == 0 or sd <= 0:
        return None
    z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    guess = max(2, math.floor(2 * (z * sd / abs(diff)) ** 2) - 2)  # normal approximation, from below
    if guess > MAX_SEEDS:
        return None
    ns = np.arange(guess, min(MAX_SEEDS, guess + 50) + 1)
    ok = np.flatnonzero(t_power(diff, sd, ns, alpha) >= power)
    return int(ns[ok[0]]) if len(ok) else None


def pooled_sd(n: Any, std: Any) -> float:
    """The spread within configurations, pooled over those with two or more seeds."""
    n, std = np.asarray(n, float), np.asarray(std, float)
    use = (n >= 2) & np.isfinite(std)
    if not use.any():
        return math.nan
    return float(np.sqrt(((n[use] - 1) * std[use] ** 2).sum() / (n[use] - 1).sum()))


def group_stats(ok: pd.DataFrame, direction: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per configuration (``group``), best first; see the module docstring for the columns."""
    cols = ["n", "mean", "std", "min", "max", "ci_low", "ci_high", "diff", "diff_low", "diff_high",
            "verdict", "seeds_needed"]
    data = ok.dropna(subset=["objective"]) if not ok.empty else ok
    if data.empty:
        return pd.DataFrame(columns=cols)
    g = data.groupby("group")["objective"].agg(n="count", mean="mean", std="std", min="min", max="max")
    g = g.sort_values("mean", ascending=direction == "minimize", kind="stable")
    n, mean, std = g["n"].to_numpy(float), g["mean"].to_numpy(float), g["std"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.where(std == 0, 0.0, special.stdtrit(n - 1, 0.5 + confidence / 2) * std / np.sqrt(n))
    half = np.where(n < 2, np.nan, half)
    g["ci_low"], g["ci_high"] = mean - half, mean + half
    var = np.where(n < 2, np.nan, std**2)
    diff, low, high = welch_interval(n, mean, var, n[0], mean[0], var[0], confidence)
    g["diff"], g["diff_low"], g["diff_high"] = diff, low, high
    spread = pooled_sd(n, std)
    verdicts, needed = ["best"], [None]
    for i in range(1, len(g)):
        verdicts.append(verdict(diff[i], low[i], high[i], int(n[i]), int(n[0]), direction))
        if i > COMPARED or not verdicts[-1].startswith("not distinguishable"):
            needed.append(None)
            continue
        sd = pooled_sd([n[i], n[0]], [std[i], std[0]]) if n[i] >= 2 and n[0] >= 2 else spread
        needed.append(seeds_needed(float(diff[i]), sd))
    g["verdict"] = verdicts
    g["seeds_needed"] = pd.array(needed, dtype="Int64")
    return g[cols]


def more_seeds_command(sweep_dir: Path, seeds: int, rows: pd.DataFrame | None = None) -> str | None:
    """The sweep's command with ``seeds`` seeds per configuration, into the same folder.

    The seeds already run come first, in their order; ``seed=`` stays where the original
    command had it (first after ``-m`` if it had none): with ``seed=`` as the first sweep
    argument, more seeds only add jobs after the existing ones, and ``resume=true`` skips
    every job that already completed. None for an Optuna search (its trials pick their own
    seeds) or when the sweep's command cannot be recovered."""
    try:
        manifest = json.loads((Path(sweep_dir) / "sweep.json").read_text())
        argv = [str(a) for a in manifest["command"]]
    except (OSError, ValueError, KeyError, TypeError):
        argv = _argv_from_rows(rows)
    if not argv or any(a.startswith(("search=", "hydra/sweeper=")) for a in argv):
        return None
    program = argv[0]
    head = "python -m hexsweep.train" if program.endswith(("hexsweep/train.py", "hexsweep.train")) \
        else f"python {shlex.quote(program)}"
    args, seed_at, old = [], None, []
    for a in argv[1:]:
        key = a.partition("=")[0].lstrip("+~")
        if key == "seed":
            seed_at = len(args)
            old = [s for s in a.partition("=")[2].split(",") if s.strip().isdigit()]
            continue
        if key in ("hydra.sweep.dir", "resume") or a in ("-m", "--multirun"):
            continue
        args.append(a)
    if not old and rows is not None and "ov.seed" in rows:
        old = [str(s) for s in dict.fromkeys(rows["ov.seed"].dropna()) if str(s).isdigit()]
    if not old:
        old = ["0"]  # the default seed
    used = {int(s) for s in old}
    extra = [str(s) for s in range(seeds + len(used)) if s not in used]
    seed_list = (old + extra)[:max(seeds, len(old))]
    contiguous = seed_list == [str(i) for i in range(len(seed_list))]
    value = f"range(0,{len(seed_list)})" if contiguous and len(seed_list) > 10 else ",".join(seed_list)
    args.insert(seed_at if seed_at is not None else 0, f"seed={value}")
    args += [f"hydra.sweep.dir={Path(sweep_dir)}", "resume=true"]
    return " ".join([head, "-m", *map(shlex.quote, args)])


def _argv_from_rows(rows: pd.DataFrame | None) -> list[str]:
    """A sweep without a manifest (other launchers): its overrides, value lists in job order, when
    the configurations are exactly their grid (else no command can reproduce the sweep)."""
    if rows is None or rows.empty:
        return []
    cols = sorted(c for c in rows.columns if c.startswith("ov.") and c != "ov.seed")
    if not cols or rows[cols].isna().any().any():
        return []
    values = {c: list(dict.fromkeys(str(v) for v in rows[c])) for c in cols}
    if len(rows[cols].astype(str).drop_duplicates()) != math.prod(len(v) for v in values.values()):
        return []
    return ["hexsweep.train", *(f"{c[3:]}={','.join(v)}" for c, v in values.items())]


# ---------------------------------------------------------------------------------------------
# Elo from games


@dataclass
class EloFit:
    """Ratings on the Elo scale, ``anchor`` fixed at 0, with 95% intervals."""

    players: list[str]
    elo: np.ndarray
    se: np.ndarray
    first_move: float  # Elo points the player moving first gains
    first_move_se: float
    cov: np.ndarray  # covariance of the ratings (the anchor's row and column are 0)
    anchor: str
    games: int
    prior_draws: float
    confidence: float = CONFIDENCE
    z: float = field(init=False)

    def __post_init__(self) -> None:
        self.z = float(special.ndtri(0.5 + self.confidence / 2))

    @property
    def low(self) -> np.ndarray:
        return self.elo - self.z * self.se

    @property
    def high(self) -> np.ndarray:
        return self.elo + self.z * self.se

    def difference(self, a: str, b: str) -> tuple[float, float, float]:
        """(elo[a] - elo[b], low, high) of the difference, from the joint covariance."""
        i, j = self.players.index(a), self.players.index(b)
        d = float(self.elo[i] - self.elo[j])
        se = math.sqrt(max(self.cov[i, i] + self.cov[j, j] - 2 * self.cov[i, j], 0.0))
        return d, d - self.z * se, d + self.z * se

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"player": self.players, "elo": self.elo, "elo_low": self.low,
                             "elo_high": self.high, "se": self.se}).sort_values("elo", ascending=False)


def fit_elo(black: list[str], white: list[str], black_won: Any, anchor: str, prior_draws: float = 1.0,
            confidence: float = CONFIDENCE) -> EloFit:
    """Bradley-Terry with a first-move term: P(black wins) = 1 / (1 + 10**(-(r_b - r_w + h) / 400)).

    Maximum likelihood, with ``prior_draws`` virtual drawn games between every two players who
    met (colourless, so they say nothing about h): it keeps a rating finite when one side won
    every game, and weighs little next to real games (0 gives the plain maximum likelihood,
    which then does not exist)."""
    black_won = np.asarray(black_won, dtype=float)
    if not (len(black) == len(white) == len(black_won)) or not len(black):
        raise StatsError("no games to rate")
    players = list(dict.fromkeys([anchor, *black, *white]))
    free = [p for p in players if p != anchor]
    col = {p: i for i, p in enumerate(free)}
    k = len(free) + 1  # ratings, then h

    def row(a: str, b: str, colour: float) -> np.ndarray:
        x = np.zeros(k)
        if a in col:
            x[col[a]] += 1
        if b in col:
            x[col[b]] -= 1
        x[-1] = colour
        return x

    rows = [row(b, w, 1.0) for b, w in zip(black, white, strict=True)]
    y, w = list(black_won), [1.0] * len(rows)
    if prior_draws > 0:
        for a, b in sorted({tuple(sorted(p)) for p in zip(black, white, strict=True) if p[0] != p[1]}):
            rows.append(row(a, b, 0.0))
            y.append(0.5)
            w.append(prior_draws)
    X, y, w = np.array(rows), np.array(y), np.array(w)  # in logits; Elo = ELO * logit

    def nll(theta: np.ndarray) -> float:
        z = X @ theta
        return float(-(w * (y * special.log_expit(z) + (1 - y) * special.log_expit(-z))).sum())

    def grad(theta: np.ndarray) -> np.ndarray:
        return -X.T @ (w * (y - special.expit(X @ theta)))

    def hess(theta: np.ndarray) -> np.ndarray:
        p = special.expit(X @ theta)
        return (X * (w * p * (1 - p))[:, None]).T @ X

    from scipy import optimize  # only a tournament fits ratings

    res = optimize.minimize(nll, np.zeros(k), jac=grad, hess=hess, method="trust-exact", options={"gtol": 1e-9})
    converged = res.success or (np.all(np.isfinite(res.x)) and np.abs(grad(res.x)).max() <= 1e-7 * w.sum())
    if not converged or not np.all(np.isfinite(res.x)):
        raise StatsError(f"the Elo fit did not converge ({res.message}); some player won or lost every "
                         "game: play more games or keep prior_draws > 0")
    info = hess(res.x)
    if np.linalg.matrix_rank(info) < k:
        raise StatsError("the games do not connect every player to the anchor (or the first-move term "
                         "cannot be told apart): every player needs games, as each colour")
    cov_full = np.linalg.inv(info) * ELO**2
    cov = np.zeros((len(players), len(players)))
    idx = [players.index(p) for p in free]
    cov[np.ix_(idx, idx)] = cov_full[:-1, :-1]
    elo = np.zeros(len(players))
    elo[idx] = ELO * res.x[:-1]
    return EloFit(players, elo, np.sqrt(np.diag(cov)), float(ELO * res.x[-1]), float(math.sqrt(cov_full[-1, -1])),
                  cov, anchor, len(black_won), prior_draws, confidence)


def games_to_separate(fit: EloFit, a: str, b: str, games_per_pairing: int, power: float = POWER) -> int | None:
    """Games per pairing that would probably separate ``a`` and ``b``: the standard error of a
    rating difference shrinks as 1/sqrt(games), so scale today's to the power wanted."""
    d, low, high = fit.difference(a, b)
    if d == 0:
        return None
    se = (high - low) / (2 * fit.z)
    z = special.ndtri(0.5 + fit.confidence / 2) + special.ndtri(power)
    need = games_per_pairing * (z * se / abs(d)) ** 2
    return int(2 * math.ceil(need / 2)) if math.isfinite(need) else None


def round_robin(players: list[str]) -> list[tuple[str, str]]:
    return list(combinations(players, 2))
