"""Win rate and a length-adjusted win rate against the sequential baseline, with bootstrap intervals.

The length adjustment is a length-only GLM: a logistic regression of the preference on
tanh(length difference / its spread) separates how much a method wins from how much longer it
writes, and the figure is the predicted win rate at zero length difference. It is NOT alpaca_eval's
length-controlled win rate, whose GLM also weighs each instruction's difficulty and is regularized
toward baselines fit on AlpacaEval's 805 instructions; that figure comes from alpaca_eval itself,
run on eval's export (docs/eval.md).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression


def win_rate(prefs) -> float:
    return 100.0 * float(np.mean(prefs)) if len(prefs) else float("nan")


def length_adjusted_win_rate(prefs, len_candidate, len_baseline) -> float:
    """The win rate (%) a length-only GLM predicts at equal length; NaN without preferences."""
    p = np.asarray(prefs, dtype=float)
    if not len(p):
        return float("nan")
    diff = np.asarray(len_candidate, dtype=float) - np.asarray(len_baseline, dtype=float)
    spread = diff.std()
    x = np.tanh(diff / spread)[:, None] if spread > 0 else np.zeros((len(p), 1))
    if np.allclose(p, p[0]):  # nothing to regress: every preference is the same
        return 100.0 * float(p[0])
    # fractional preferences as weighted 0/1 outcomes
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(
        np.vstack([x, x]), np.r_[np.ones(len(p)), np.zeros(len(p))], sample_weight=np.r_[p, 1 - p] + 1e-9)
    return 100.0 / (1.0 + np.exp(-fit.intercept_[0]))


def bootstrap(stat, *columns, n: int = 500, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of stat(*columns) over prompts resampled with replacement."""
    rng = np.random.default_rng(seed)
    cols = [np.asarray(c, dtype=float) for c in columns]
    m = len(cols[0])
    if m < 2:
        return float("nan"), float("nan")
    values = [stat(*(c[idx] for c in cols)) for idx in (rng.integers(0, m, m) for _ in range(n))]
    lo, hi = np.nanpercentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def geomean(values) -> float:
    v = np.asarray([x for x in values if x and x > 0], dtype=float)
    return float(np.exp(np.log(v).mean())) if len(v) else float("nan")
