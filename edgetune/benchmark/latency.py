"""Latency of several sessions measured side by side, interleaved, after warm-up.

Interleaving (run A, then B, then A, ...) exposes every model to the same machine noise, so
ratios between them hold even on a busy machine where absolute numbers drift.

When to stop is decided by an honest rule rather than a fixed count: at least ``min_iters``
runs and ``min_seconds``, and, when ``stop_percentile`` is set, until the LoadGen-style upper
confidence bound on that percentile exists (``stats.min_samples_for_upper_bound``) and lies
within ``tolerance`` of the estimate, or the ``max_iters`` / ``max_seconds`` cap is reached
(then ``converged`` is False and the report says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.benchmark.stats import (
    min_samples_for_upper_bound,
    percentile_ci,
    percentile_upper_bound,
)
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import ConfigError
from edgetune.runtimes.base import Session

__all__ = ["PERCENTILES", "LatencyConfig", "LatencyStats", "measure_interleaved"]

Feed = Mapping[str, np.ndarray]
Clock = Callable[[], float]

PERCENTILES = (50.0, 90.0, 95.0, 99.0)
"""The percentiles every latency result reports."""

_CHECK_EVERY = 32
"""Runs between two evaluations of the stopping rule (sorting costs O(n log n))."""


@dataclass(frozen=True, kw_only=True)
class LatencyConfig:
    warmup: int = 10
    min_iters: int = 100
    max_iters: int = 5000
    min_seconds: float = 2.0
    max_seconds: float = 30.0
    stop_percentile: float | None = None
    """Run until this percentile's upper confidence bound is tight (e.g. 90.0); None: only the
    minimums decide."""
    confidence: float = 0.99
    """Confidence of the upper bound used by the stopping rule and of the reported intervals."""
    tolerance: float = 0.05
    """Stop once (upper bound - estimate) / estimate is at most this."""
    block: int = 1
    """Consecutive timed runs of one session before switching to the next; more than 1 keeps a
    runtime's spinning thread pool from stealing time from the next runtime's run."""
    switch_runs: int = 0
    """Untimed runs each time the loop switches to a session (with more than one session), so
    waking its thread pool and refilling caches another runtime evicted is not counted as its
    warm latency; cold behaviour is measured apart, by the cold-start figures."""

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_iters < 1 or self.max_iters < self.min_iters:
            raise ConfigError(
                f"latency iterations must satisfy warmup >= 0 and 1 <= min_iters <= max_iters; got "
                f"warmup={self.warmup}, min_iters={self.min_iters}, max_iters={self.max_iters}"
            )
        if self.min_seconds < 0 or self.max_seconds < self.min_seconds:
            raise ConfigError(
                f"latency seconds must satisfy 0 <= min_seconds <= max_seconds; got "
                f"min_seconds={self.min_seconds}, max_seconds={self.max_seconds}"
            )
        self._check_rule()

    def _check_rule(self) -> None:
        if self.stop_percentile is not None and not 0 < self.stop_percentile < 100:
            raise ConfigError(f"stop_percentile must be in (0, 100); got {self.stop_percentile}")
        if not 0 < self.confidence < 1 or self.tolerance <= 0 or self.block < 1:
            raise ConfigError(
                f"latency needs 0 < confidence < 1, tolerance > 0 and block >= 1; got "
                f"confidence={self.confidence}, tolerance={self.tolerance}, block={self.block}"
            )
        if self.switch_runs < 0:
            raise ConfigError(f"switch_runs must be >= 0; got {self.switch_runs}")


@dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Per-run wall times of one session, in milliseconds."""

    samples_ms: tuple[float, ...] = field(repr=False)
    confidence: float = 0.95
    """Confidence of the intervals in :meth:`to_dict`."""
    stop_reason: str = ""
    converged: bool | None = None
    """Whether this session's samples meet the stopping rule (None: no rule was asked for);
    in an interleaved loop one noisy session can keep the others running past their point."""
    seconds: float = 0.0
    """Wall time of the whole measurement (all sessions)."""

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p95(self) -> float:
        return self.percentile(95)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    def ci(self, q: float) -> tuple[float | None, float | None]:
        """Distribution-free confidence interval of percentile ``q`` (None: too few samples)."""
        return percentile_ci(self.samples_ms, q, self.confidence)

    def upper_bound(self, q: float, confidence: float | None = None) -> float | None:
        return percentile_upper_bound(self.samples_ms, q, confidence or self.confidence)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {f"p{q:g}": self.percentile(q) for q in PERCENTILES}
        data.update(mean=self.mean, n=len(self.samples_ms))
        data.update(min=float(np.min(self.samples_ms)), max=float(np.max(self.samples_ms)))
        data.update(std=float(np.std(self.samples_ms)), confidence=self.confidence)
        data["ci"] = {f"p{q:g}": list(self.ci(q)) for q in PERCENTILES}
        data.update(stop_reason=self.stop_reason, converged=self.converged)
        return data


def measure_interleaved(
    sessions: Mapping[str, Session],
    feeds: Sequence[Feed],
    config: LatencyConfig | None = None,
    *,
    progress: Progress = NULL_PROGRESS,
    clock: Clock = time.perf_counter,
) -> dict[str, LatencyStats]:
    """Time every session on the same feeds in rotating order; return per-session stats."""
    config = config or LatencyConfig()
    names = list(sessions)
    for _ in range(config.warmup):
        for name in names:
            sessions[name].run(feeds[0])
    times: dict[str, list[float]] = {name: [] for name in names}
    progress.start("benchmarking", config.min_iters)
    start = clock()
    i, reason = 0, ""
    while not reason:
        _run_round(sessions, names, feeds, i, config, times, clock)
        i += config.block
        if i <= config.min_iters:
            progress.advance(config.block)
        reason = _stop_reason(i, clock() - start, times, config)
    progress.finish()
    seconds = clock() - start
    return {
        name: LatencyStats(
            samples_ms=tuple(t),
            confidence=config.confidence,
            stop_reason=reason,
            converged=None if config.stop_percentile is None else _tight(t, config),
            seconds=seconds,
        )
        for name, t in times.items()
    }


def _run_round(
    sessions: Mapping[str, Session],
    names: list[str],
    feeds: Sequence[Feed],
    i: int,
    config: LatencyConfig,
    times: dict[str, list[float]],
    clock: Clock,
) -> None:
    """One round: every session runs ``block`` times; the starting session rotates."""
    block = config.block
    rotation = (i // block) % len(names)
    untimed = config.switch_runs if len(names) > 1 else 0
    for k in range(len(names)):
        name = names[(rotation + k) % len(names)]
        session, out = sessions[name], times[name]
        for j in range(untimed):
            session.run(feeds[(i + j) % len(feeds)])
        for j in range(block):
            feed = feeds[(i + j) % len(feeds)]
            t0 = clock()
            session.run(feed)
            out.append((clock() - t0) * 1e3)


def _stop_reason(
    iters: int, elapsed: float, times: dict[str, list[float]], config: LatencyConfig
) -> str:
    """Why to stop now, or '' to go on."""
    if iters >= config.max_iters:
        return "max_iters"
    if elapsed >= config.max_seconds:
        return "max_seconds"
    if iters < config.min_iters or elapsed < config.min_seconds:
        return ""
    if config.stop_percentile is None:
        return "minimums"
    if iters % _CHECK_EVERY >= config.block and iters > config.min_iters:
        return ""
    return "converged" if all(_tight(t, config) for t in times.values()) else ""


def _tight(samples: list[float], config: LatencyConfig) -> bool:
    """LoadGen-style: the upper bound on the percentile exists and is close to the estimate."""
    q = float(config.stop_percentile or 50.0)
    if len(samples) < min_samples_for_upper_bound(q / 100.0, config.confidence):
        return False
    bound = percentile_upper_bound(samples, q, config.confidence)
    estimate = float(np.percentile(samples, q))
    return bound is not None and bound <= estimate * (1.0 + config.tolerance)
