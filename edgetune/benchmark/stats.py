"""Distribution-free statistics for latency percentiles: confidence intervals and stopping rules.

Latency distributions are skewed, multi-modal and heavy-tailed, so edgetune assumes nothing
about their shape. A percentile's confidence interval comes from order statistics: if ``B`` is
the number of the ``n`` samples that fall below the true ``q``-quantile, ``B ~ Binomial(n, q)``,
and the sorted samples ``x(l) <= x(u)`` bracket the quantile with probability
``P(l <= B < u) = F(u - 1) - F(l - 1)`` (``F`` the binomial CDF). This is the same reasoning as
MLPerf LoadGen's early-stopping rule, which reports the smallest order statistic that is, with
the chosen confidence, at least the true percentile (a one-sided *upper bound*): it exists only
once ``1 - q**n >= confidence``, i.e. at least ``ln(1 - c) / ln(q)`` samples (44 for p90 at 99%,
459 for p99 at 99%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "binom_cdf",
    "min_samples_for_upper_bound",
    "percentile_ci",
    "percentile_upper_bound",
]


def binom_cdf(n: int, p: float) -> np.ndarray:
    """``F(k) = P(Binomial(n, p) <= k)`` for ``k = 0..n``, in log space (stable for large n)."""
    if n < 0 or not 0.0 < p < 1.0:
        raise ValueError(f"binom_cdf needs n >= 0 and 0 < p < 1; got n={n}, p={p}")
    k = np.arange(n + 1, dtype=np.float64)
    log_pmf = _log_comb(n, k) + k * math.log(p) + (n - k) * math.log1p(-p)
    pmf = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(pmf)
    return np.asarray(np.minimum(cdf / cdf[-1], 1.0))


def _log_comb(n: int, k: np.ndarray) -> np.ndarray:
    """``log(n choose k)`` for every k, from cumulative sums of logs (no scipy needed)."""
    logs = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    ki = k.astype(np.int64)
    return np.asarray(logs[n] - logs[ki] - logs[n - ki])


def min_samples_for_upper_bound(q: float, confidence: float) -> int:
    """Fewest samples for which an upper confidence bound on the ``q``-quantile exists."""
    _check_fraction(q, "q")
    _check_fraction(confidence, "confidence")
    return math.ceil(math.log1p(-confidence) / math.log(q) - 1e-12)


def percentile_ci(
    samples: Sequence[float] | np.ndarray, percentile: float, confidence: float = 0.95
) -> tuple[float | None, float | None]:
    """Two-sided distribution-free confidence interval of a percentile (``None`` where the
    sample is too small to bound that side)."""
    q = percentile / 100.0
    _check_fraction(q, "percentile / 100")
    _check_fraction(confidence, "confidence")
    data = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(data)
    if n == 0:
        return None, None
    cdf = binom_cdf(n, q)
    alpha = (1.0 - confidence) / 2.0
    low_candidates = np.nonzero(cdf[:n] <= alpha)[0]  # l - 1 with F(l - 1) <= alpha
    high_candidates = np.nonzero(cdf[:n] >= 1.0 - alpha)[0]  # u - 1 with F(u - 1) >= 1 - alpha
    low = float(data[low_candidates[-1]]) if len(low_candidates) else None
    high = float(data[high_candidates[0]]) if len(high_candidates) else None
    return low, high


def percentile_upper_bound(
    samples: Sequence[float] | np.ndarray, percentile: float, confidence: float = 0.99
) -> float | None:
    """LoadGen-style one-sided bound: the smallest sample that is at least the true percentile
    with probability ``confidence``; ``None`` while there are too few samples."""
    q = percentile / 100.0
    _check_fraction(q, "percentile / 100")
    data = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(data)
    if n < min_samples_for_upper_bound(q, confidence):
        return None
    cdf = binom_cdf(n, q)
    index = int(np.argmax(cdf[:n] >= confidence))  # u - 1, exists because n is large enough
    return float(data[index])


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1; got {value}")
