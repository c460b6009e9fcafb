"""Percentile statistics and the stopping rule, checked against known distributions and scipy."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from scipy import stats as sps

from edgetune.benchmark.latency import LatencyConfig, LatencyStats, measure_interleaved
from edgetune.benchmark.stats import (
    binom_cdf,
    min_samples_for_upper_bound,
    percentile_ci,
    percentile_upper_bound,
)
from edgetune.errors import ConfigError


@pytest.mark.parametrize(("n", "p"), [(1, 0.5), (10, 0.9), (200, 0.5), (1000, 0.99), (20000, 0.95)])
def test_binom_cdf_matches_scipy(n: int, p: float) -> None:
    k = np.arange(n + 1)
    np.testing.assert_allclose(binom_cdf(n, p), sps.binom.cdf(k, n, p), atol=1e-9)


def test_min_samples_for_upper_bound_is_the_loadgen_count() -> None:
    # 1 - q**n >= c first holds at n = ceil(ln(1 - c) / ln(q)).
    for q, c, want in ((0.9, 0.99, 44), (0.99, 0.99, 459), (0.5, 0.99, 7), (0.999, 0.99, 4603)):
        n = min_samples_for_upper_bound(q, c)
        assert n == want
        assert 1 - q**n >= c > 1 - q ** (n - 1)


def _scipy_ci(samples: np.ndarray, q: float, c: float) -> tuple[float | None, float | None]:
    """Reference: order statistics from scipy's binomial CDF."""
    data = np.sort(samples)
    n = len(data)
    cdf = sps.binom.cdf(np.arange(n), n, q)
    alpha = (1 - c) / 2
    low = np.nonzero(cdf <= alpha)[0]
    high = np.nonzero(cdf >= 1 - alpha)[0]
    return (data[low[-1]] if len(low) else None, data[high[0]] if len(high) else None)


@pytest.mark.parametrize(("n", "pct"), [(50, 50.0), (300, 90.0), (1000, 99.0)])
def test_percentile_ci_matches_scipy_order_statistics(n: int, pct: float) -> None:
    samples = np.random.default_rng(3).lognormal(0.0, 0.5, n)
    assert percentile_ci(samples, pct, 0.95) == _scipy_ci(samples, pct / 100, 0.95)


def test_percentile_ci_brackets_the_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(4)
    widths = []
    for n in (200, 2000, 20000):
        samples = rng.exponential(1.0, n)
        low, high = percentile_ci(samples, 90, 0.95)
        assert low is not None and high is not None
        assert low <= np.percentile(samples, 90) <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_percentile_ci_is_open_when_the_sample_is_too_small() -> None:
    _, high = percentile_ci(np.arange(5.0), 99, 0.95)
    assert high is None  # 5 samples cannot bound p99 from above
    assert percentile_upper_bound(np.arange(43.0), 90, 0.99) is None
    assert percentile_upper_bound(np.arange(44.0), 90, 0.99) == 43.0


def _quantile_exponential(q: float) -> float:
    return -math.log(1.0 - q)


@pytest.mark.parametrize("pct", [50.0, 90.0, 99.0])
def test_ci_coverage_on_a_known_distribution(pct: float) -> None:
    """Over many draws from Exp(1), the 95% interval holds the true percentile >= 95% of the time
    (order-statistic intervals are conservative), and the upper bound holds it >= 99%."""
    rng = np.random.default_rng(11)
    truth = _quantile_exponential(pct / 100)
    trials, n = 600, 600
    inside = bounded = 0
    for _ in range(trials):
        samples = rng.exponential(1.0, n)
        low, high = percentile_ci(samples, pct, 0.95)
        inside += low is not None and high is not None and low <= truth <= high
        bound = percentile_upper_bound(samples, pct, 0.99)
        bounded += bound is not None and truth <= bound
    assert inside / trials >= 0.93  # 95% nominal, minus binomial noise of 600 trials
    assert bounded / trials >= 0.975  # 99% nominal


def test_stats_reject_bad_fractions() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile_ci([1.0, 2.0], 100.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        min_samples_for_upper_bound(0.9, 1.0)


def test_latency_stats_dict_has_every_percentile_and_interval() -> None:
    stats = LatencyStats(
        samples_ms=tuple(np.random.default_rng(0).exponential(1.0, 2000)), confidence=0.95
    )
    d = stats.to_dict()
    for key in ("p50", "p90", "p95", "p99", "mean", "n", "ci", "min", "max", "std"):
        assert key in d
    assert d["n"] == 2000
    assert d["p50"] == pytest.approx(np.percentile(stats.samples_ms, 50))
    assert set(d["ci"]) == {"p50", "p90", "p95", "p99"}
    low, high = d["ci"]["p99"]
    assert low <= d["p99"] <= high


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeSession:
    """Advances a fake clock by the next duration (seconds) of an iterator on each run."""

    def __init__(self, clock: _Clock, durations: Iterator[float]) -> None:
        self.clock, self.durations, self.runs = clock, durations, 0
        self.output_names = ["y"]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.clock.now += next(self.durations)
        self.runs += 1
        return [np.zeros(1)]


def _constant(value: float) -> Iterator[float]:
    while True:
        yield value


def _heavy_tail(seed: int) -> Iterator[float]:
    rng = np.random.default_rng(seed)
    while True:
        yield 1e-3 * (1.0 + rng.pareto(1.1))


FEEDS = [{"x": np.zeros(1, np.float32)}]


def test_stopping_rule_stops_once_the_bound_is_tight() -> None:
    clock = _Clock()
    sessions = {
        "a": _FakeSession(clock, _constant(1e-3)),
        "b": _FakeSession(clock, _constant(2e-3)),
    }
    config = LatencyConfig(
        warmup=0,
        min_iters=50,
        max_iters=10000,
        min_seconds=0.0,
        max_seconds=100.0,
        stop_percentile=90.0,
    )
    stats = measure_interleaved(sessions, FEEDS, config, clock=clock)
    assert stats["a"].converged is True and stats["a"].stop_reason == "converged"
    assert 50 <= len(stats["a"].samples_ms) < 200  # 44 needed for p90 at 99%, checked every 32
    assert stats["b"].p50 == pytest.approx(2.0)


def test_stopping_rule_reports_when_the_cap_comes_first() -> None:
    clock = _Clock()
    sessions = {"a": _FakeSession(clock, _heavy_tail(1))}
    config = LatencyConfig(
        warmup=0,
        min_iters=100,
        max_iters=800,
        min_seconds=0.0,
        max_seconds=1e9,
        stop_percentile=99.0,
        tolerance=0.001,
    )
    stats = measure_interleaved(sessions, FEEDS, config, clock=clock)
    assert stats["a"].converged is False
    assert stats["a"].stop_reason == "max_iters"
    assert stats["a"].to_dict()["converged"] is False


def test_minimum_seconds_hold_even_when_converged() -> None:
    clock = _Clock()
    sessions = {"a": _FakeSession(clock, _constant(1e-3))}
    config = LatencyConfig(
        warmup=0,
        min_iters=10,
        max_iters=100000,
        min_seconds=2.0,
        max_seconds=10.0,
        stop_percentile=50.0,
    )
    stats = measure_interleaved(sessions, FEEDS, config, clock=clock)
    assert sum(stats["a"].samples_ms) >= 2000.0 - 1e-6


def test_blocks_and_switch_runs_time_only_the_steady_runs() -> None:
    clock = _Clock()
    sessions = {
        "a": _FakeSession(clock, _constant(1e-3)),
        "b": _FakeSession(clock, _constant(1e-3)),
    }
    config = LatencyConfig(
        warmup=2,
        min_iters=40,
        max_iters=40,
        min_seconds=0.0,
        max_seconds=10.0,
        block=10,
        switch_runs=1,
    )
    stats = measure_interleaved(sessions, FEEDS, config, clock=clock)
    assert len(stats["a"].samples_ms) == 40
    assert sessions["a"].runs == 2 + 40 + 4  # warm-up, timed, one untimed run per switch


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_iters": 0},
        {"min_iters": 10, "max_iters": 5},
        {"min_seconds": 5.0, "max_seconds": 1.0},
        {"stop_percentile": 100.0},
        {"confidence": 1.0},
        {"block": 0},
        {"switch_runs": -1},
    ],
)
def test_latency_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        LatencyConfig(**kwargs)  # type: ignore[arg-type]
