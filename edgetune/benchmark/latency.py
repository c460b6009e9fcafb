"""Latency of several sessions measured side by side, interleaved, after warm-up.

Interleaving (run A, then B, then A, ...) exposes every model to the same machine noise, so
ratios between them hold even on a busy machine where absolute numbers drift.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.runtimes.base import Session

__all__ = ["LatencyConfig", "LatencyStats", "measure_interleaved"]

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class LatencyConfig:
    warmup: int = 10
    min_iters: int = 100
    max_iters: int = 5000
    min_seconds: float = 2.0
    max_seconds: float = 30.0


@dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Per-run wall times of one session, in milliseconds."""

    samples_ms: tuple[float, ...] = field(repr=False)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "mean": self.mean,
            "n": len(self.samples_ms),
        }


def measure_interleaved(
    sessions: Mapping[str, Session],
    feeds: Sequence[Feed],
    config: LatencyConfig | None = None,
    *,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, LatencyStats]:
    """Time every session on the same feeds in rotating order; return per-session stats."""
    config = config or LatencyConfig()
    names = list(sessions)
    for _ in range(config.warmup):
        for name in names:
            sessions[name].run(feeds[0])
    times: dict[str, list[float]] = {name: [] for name in names}
    progress.start("benchmarking", config.min_iters)
    start = time.perf_counter()
    i = 0
    while not _done(i, time.perf_counter() - start, config):
        feed = feeds[i % len(feeds)]
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            t0 = time.perf_counter_ns()
            sessions[name].run(feed)
            times[name].append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
        if i <= config.min_iters:
            progress.advance()
    progress.finish()
    return {name: LatencyStats(samples_ms=tuple(t)) for name, t in times.items()}


def _done(iters: int, elapsed: float, config: LatencyConfig) -> bool:
    if iters >= config.max_iters or elapsed >= config.max_seconds:
        return True
    return iters >= config.min_iters and elapsed >= config.min_seconds
