"""The race's decisions: which configurations are already beaten, from the seeds run so far.

Pure functions of the numbers (no Hydra, no files), so that the sweeper, a resume and the tests
replay exactly the same decisions. Every distribution comes from scipy.stats and the multiple
comparison correction from statsmodels; only the bookkeeping is ours.

How a race decides (docs/racing.md says why):

- **Looks.** Seed k is the same seed for every configuration (paired data). A look at n seeds
  happens once every surviving configuration has finished its seeds 0..n-1, for n = min_seeds
  .. max_seeds: at most ``L = max_seeds - min_seeds + 1`` looks, each at level ``alpha / L``
  (Bonferroni over the looks), so that the chance of any false elimination over the whole
  race is at most ``alpha``. A look uses seeds 0..n-1 only: what it decides never changes when
  later seeds come in, in whatever order they finish, so a resumed race recomputes the same
  eliminations from the same data.
- **Within a look**, every pair of survivors is compared and the p-values are Holm-corrected
  over all pairs (statsmodels ``multipletests``): comparing only against the best-looking
  configuration would not hold the family-wise level, because "the best" is picked from the
  same data. A survivor is eliminated when its pair with the best (lowest mean rank for
  ``friedman``, best mean for ``paired_t``) is rejected.
- ``test=friedman`` (F-Race, Birattari et al. 2002): the Friedman test over the complete blocks
  (seeds every survivor completed) gates the post-hoc comparisons, which are Conover's (1999)
  all-pairs test on the rank sums, the one F-Race uses (t distribution with (b-1)(k-1) degrees
  of freedom, from scipy). With two survivors left, the Wilcoxon signed-rank test (as irace
  switches to it: Friedman with two configurations is only a sign test).
- ``test=paired_t``: Student's paired t-test (``ttest_rel``) for every pair, on the seeds both
  completed.
- The effect reported for an elimination is the mean paired difference (eliminated - best, in
  the objective's units) with its 95% paired t-interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

# the report's: its interval level, the power of "seeds that would probably separate", and the most seeds
from hexsweep.report.stats import CONFIDENCE, MAX_SEEDS, POWER

TESTS = ("friedman", "paired_t")


@dataclass
class Elimination:
    """One configuration dropped at the look with ``seeds`` seeds: beaten by ``best`` (p-value
    Holm-adjusted over the look's pairs, to compare with the look's level), or ``failed`` (its
    first min_seeds jobs all failed; p and effect are NaN then)."""

    config: int
    seeds: int
    test: str
    p: float
    level: float
    best: int
    blocks: int
    effect: float = math.nan
    low: float = math.nan
    high: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class Look:
    """What one look tested: its seed count, survivors, blocks and the omnibus p-value (friedman)."""

    seeds: int
    alive: list[int]
    blocks: int
    test: str
    omnibus_p: float = math.nan
    eliminated: list[int] = field(default_factory=list)


class RaceDecider:
    """Eliminations from a (configurations x seeds) table of objective values.

    ``values[c, k]``: configuration c's objective at seed k (NaN: failed); ``finished[c, k]``:
    whether that job has ended (completed or failed). ``update`` runs every look the data allow
    and returns the new eliminations; calling it after every finished job, or once on the whole
    table (a resume), gives the same eliminations."""

    def __init__(self, n_configs: int, direction: str = "minimize", alpha: float = 0.05, min_seeds: int = 3,
                 max_seeds: int = 20, test: str = "friedman") -> None:
        if test not in TESTS:
            raise ValueError(f"test {test!r}: allowed {', '.join(TESTS)}")
        self.n_configs, self.direction, self.alpha, self.test = n_configs, direction, alpha, test
        self.min_seeds, self.max_seeds = min_seeds, max_seeds
        self.level = alpha / (max_seeds - min_seeds + 1)  # Bonferroni over the looks
        self.alive = list(range(n_configs))
        self.eliminations: list[Elimination] = []
        self.looks: list[Look] = []
        self.next_look = min_seeds

    @property
    def done(self) -> bool:
        return len(self.alive) <= 1 or self.next_look > self.max_seeds

    def update(self, values: np.ndarray, finished: np.ndarray) -> list[Elimination]:
        new = self._failures(values, finished)
        while len(self.alive) > 1 and self.next_look <= self.max_seeds:
            n = self.next_look
            if not finished[self.alive, :n].all():
                break
            new += self._look(values, n)
            self.next_look += 1
        return new

    def _failures(self, values: np.ndarray, finished: np.ndarray) -> list[Elimination]:
        """A configuration whose first min_seeds jobs all failed leaves the race: no test can
        rank it, and running it further only spends jobs."""
        out = []
        for c in list(self.alive):
            m = self.min_seeds
            if finished[c, :m].all() and not np.isfinite(values[c, :m]).any():
                self.alive.remove(c)
                out.append(Elimination(c, m, "failed", math.nan, self.level, -1, 0))
        self.eliminations += out
        return out

    def _loss(self, values: np.ndarray) -> np.ndarray:
        """Smaller is better."""
        return values if self.direction == "minimize" else -values

    def _look(self, values: np.ndarray, n: int) -> list[Elimination]:
        alive = list(self.alive)
        loss = self._loss(values[alive, :n])
        complete = np.isfinite(loss).all(axis=0)  # blocks: seeds every survivor completed
        blocks = loss[:, complete]
        b, k = blocks.shape[1], len(alive)
        look = Look(n, alive, b, self.test)
        self.looks.append(look)
        if self.test == "paired_t":
            best, pairs, raw = self._paired_t(loss)
            test = "paired_t (Holm)"
        elif k >= 3:
            if b < 2:
                return []
            look.omnibus_p = friedman_p(blocks)
            if not look.omnibus_p < self.level:
                return []
            best, pairs, raw = self._conover(blocks)
            test = "friedman + Conover (Holm)"
        else:
            best, pairs, raw = self._wilcoxon(loss)
            test = "Wilcoxon signed-rank"
        if best is None or not pairs:
            return []
        raw = np.where(np.isfinite(raw), raw, 1.0)
        if raw.min() > self.level / len(raw):
            # Holm rejects nothing when even the smallest p-value misses level / m; asked anyway,
            # statsmodels' Holm runs gc.collect() on every call (0.1-0.3 s in a process that
            # holds torch), which a race's every look would pay
            return []
        reject, adjusted, _, _ = multipletests(raw, alpha=self.level, method="holm")
        out = []
        for (i, j), rej, p in zip(pairs, reject, adjusted, strict=True):
            if not rej or best not in (i, j):
                continue
            other = j if i == best else i
            if not _mean_worse(loss[other], loss[best]):
                continue
            effect, low, high = paired_effect(values[alive[other], :n], values[alive[best], :n])
            out.append(Elimination(alive[other], n, test, float(p), self.level, alive[best],
                                   int(np.isfinite(loss[[other, best]]).all(axis=0).sum()), effect, low, high))
        for e in out:
            self.alive.remove(e.config)
            look.eliminated.append(e.config)
        self.eliminations += out
        return out

    def _paired_t(self, loss: np.ndarray) -> tuple[int | None, list[tuple[int, int]], np.ndarray]:
        k = len(loss)
        complete = np.isfinite(loss).all(axis=0)
        means = np.nanmean(np.where(complete, loss, np.nan), axis=1) if complete.any() else np.nanmean(loss, axis=1)
        if not np.isfinite(means).any():
            return None, [], np.array([])
        best = int(np.nanargmin(means))
        pairs = list(combinations(range(k), 2))
        return best, pairs, paired_t_all(loss, pairs)

    def _conover(self, blocks: np.ndarray) -> tuple[int, list[tuple[int, int]], np.ndarray]:
        ranks_sum, raw, pairs = conover_friedman(blocks)
        return int(np.argmin(ranks_sum)), pairs, raw

    def _wilcoxon(self, loss: np.ndarray) -> tuple[int | None, list[tuple[int, int]], np.ndarray]:
        both = np.isfinite(loss).all(axis=0)
        if both.sum() < 2:
            return None, [], np.array([])
        best = 0 if loss[0, both].mean() <= loss[1, both].mean() else 1
        return best, [(0, 1)], np.array([wilcoxon_p(loss[0], loss[1])])


def _mean_worse(other: np.ndarray, best: np.ndarray) -> bool:
    both = np.isfinite(other) & np.isfinite(best)
    return bool(both.any() and (other[both] - best[both]).mean() > 0)


def friedman_p(blocks: np.ndarray) -> float:
    """The Friedman test's p-value over (configurations x blocks); 1 when every block ties."""
    with np.errstate(all="ignore"):
        p = stats.friedmanchisquare(*blocks).pvalue
    return float(p) if math.isfinite(p) else 1.0


def conover_friedman(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Conover's all-pairs comparisons after a Friedman test (Conover, Practical Nonparametric
    Statistics, 3rd ed., 1999, section 5.8; the post-hoc test of F-Race, and of R's
    PMCMRplus::frdAllPairsConoverTest): ranks within each block (ties get mid-ranks),
    t = |R_i - R_j| / sqrt(2 (b A - sum R^2) / ((b-1)(k-1))) with A the sum of squared ranks,
    two-sided against Student's t with (b-1)(k-1) degrees of freedom.

    Returns the rank sums, the unadjusted p-values and their pairs (i < j)."""
    k, b = blocks.shape
    ranks = stats.rankdata(blocks, axis=0)  # rank the configurations within each block (seed)
    r = ranks.sum(axis=1)
    a = float((ranks**2).sum())
    denom = 2 * (b * a - float((r**2).sum())) / ((b - 1) * (k - 1))
    pairs = list(combinations(range(k), 2))
    diff = np.array([abs(r[i] - r[j]) for i, j in pairs])
    if denom <= 0:
        # every block ranks the configurations the same: no residual variance, and Conover's t is
        # infinite for every pair, also for two configurations that only happened to keep their
        # order over a few seeds. Each pair then gets the Wilcoxon signed-rank test on its blocks.
        return r, np.array([wilcoxon_p(blocks[i], blocks[j]) for i, j in pairs]), pairs
    t = diff / math.sqrt(denom)
    return r, 2 * stats.t.sf(t, (b - 1) * (k - 1)), pairs


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value on the seeds both completed (1 when they never differ)."""
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 2 or not np.any(a[both] != b[both]):
        return 1.0
    return float(stats.wilcoxon(a[both], b[both]).pvalue)


def paired_t_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value on the seeds both completed (1 without a test to run)."""
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 2:
        return 1.0
    d = a[both] - b[both]
    if not np.any(d != d[0]):  # no spread: equal means nothing, a constant gap is decisive
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(a[both], b[both]).pvalue)


def paired_t_all(loss: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """``paired_t_p`` for every pair: one vectorised ``ttest_rel`` when no job failed (the usual
    case, and what makes thousands of simulated races cheap), else pair by pair."""
    if not np.isfinite(loss).all() or loss.shape[1] < 2:
        return np.array([paired_t_p(loss[i], loss[j]) for i, j in pairs])
    i, j = (np.array(x) for x in zip(*pairs, strict=True))
    d = loss[i] - loss[j]
    constant = (d == d[:, :1]).all(axis=1)
    p = np.where(d[:, 0] == 0, 1.0, 0.0)  # no spread: as paired_t_p
    if not constant.all():
        # only the pairs with a spread: scipy warns on stderr ("catastrophic cancellation") for a
        # constant difference, e.g. two configurations of a deterministic app, at every look
        with np.errstate(all="ignore"):
            p[~constant] = stats.ttest_rel(loss[i[~constant]], loss[j[~constant]], axis=1).pvalue
    return p


def paired_effect(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean of a - b over the seeds both completed, with its paired t-interval (NaN bounds
    with fewer than 2 such seeds)."""
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    if not np.any(d != d[0]):
        return mean, mean, mean
    ci = stats.ttest_rel(a[both], b[both]).confidence_interval(confidence)
    return mean, float(ci.low), float(ci.high)


def seeds_to_separate(a: np.ndarray, b: np.ndarray, level: float, power: float = POWER) -> int | None:
    """Seeds in all that a paired t-test at ``level`` would probably (``power``) need to separate
    two configurations, taking their observed mean paired difference and its spread as the truth
    (statsmodels' TTestPower, the one-sample/paired t); None when no number would (no difference
    or no spread) or more than MAX_SEEDS."""
    from statsmodels.stats.power import TTestPower

    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    if len(d) < 2:
        return None
    sd = float(d.std(ddof=1))
    if sd == 0 or d.mean() == 0:
        return None
    try:
        with warnings.catch_warnings():  # a root finder that fails returns NaN (None here) and warns on stderr
            warnings.simplefilter("ignore")
            n = TTestPower().solve_power(effect_size=abs(float(d.mean())) / sd, alpha=level, power=power,
                                         alternative="two-sided")
    except (ValueError, RuntimeError):
        return None
    n = float(np.asarray(n).ravel()[0])
    return int(math.ceil(n)) if math.isfinite(n) and n <= MAX_SEEDS else None


def seed_correlation(values: np.ndarray) -> dict[str, Any] | None:
    """How strongly seeds correlate across configurations, and what pairing by seed bought.

    Over the seeds every configuration completed: the mean Pearson correlation between two
    configurations' objectives across seeds, and the median over pairs of
    (var_a + var_b) / var(a - b): how many times fewer seeds a paired comparison needs than an
    unpaired one for the same precision (1: pairing did nothing; > 1 it helped). The median: two
    near-identical configurations give a huge ratio that a mean would be all about."""
    complete = np.isfinite(values).all(axis=0)
    x = values[:, complete]
    if x.shape[0] < 2 or x.shape[1] < 3:
        return None
    rs, gains = [], []
    for i, j in combinations(range(len(x)), 2):
        if np.std(x[i]) == 0 or np.std(x[j]) == 0:
            continue
        rs.append(float(stats.pearsonr(x[i], x[j]).statistic))
        var_diff = float(np.var(x[i] - x[j], ddof=1))
        if var_diff > 0:
            gains.append((float(np.var(x[i], ddof=1)) + float(np.var(x[j], ddof=1))) / var_diff)
    if not rs:
        return None
    return {"seeds": int(x.shape[1]), "mean_r": float(np.mean(rs)), "min_r": float(np.min(rs)),
            "max_r": float(np.max(rs)), "pairing_gain": float(np.median(gains)) if gains else None}
