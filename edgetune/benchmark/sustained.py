"""Sustained load: latency over minutes, throttling detection, CPU frequency and temperature.

A burst figure (a few seconds of warm runs) is what a phone or a fanless box shows before it
heats up. A sustained run keeps the model busy for ``seconds`` and cuts the time into windows;
the device counts as throttled when a rolling window's median latency exceeds the median of the
first windows by more than ``threshold`` (1.10x, the rule of Android's Jetpack Microbenchmark).
CPU frequency and temperature are sampled from /sys once per window where they are readable
(virtual machines and containers often hide them; the result says which were read).
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.errors import ConfigError
from edgetune.runtimes.base import Session

__all__ = [
    "SustainedConfig",
    "SustainedResult",
    "ThrottleVerdict",
    "detect_throttle",
    "read_sensors",
    "run_sustained",
]

Feed = Mapping[str, np.ndarray]
Clock = Callable[[], float]
Sensors = Callable[[], dict[str, float | None]]


@dataclass(frozen=True, kw_only=True)
class SustainedConfig:
    seconds: float = 60.0
    window_s: float | None = None
    """Window length; default: seconds / 30, between 0.25 s and 10 s."""
    threshold: float = 1.10
    baseline_windows: int = 3
    rolling: int = 3

    def __post_init__(self) -> None:
        if self.seconds <= 0 or (self.window_s is not None and self.window_s <= 0):
            raise ConfigError(
                f"sustained seconds and window must be > 0; got seconds={self.seconds}, "
                f"window_s={self.window_s}"
            )
        if self.threshold <= 1.0 or self.baseline_windows < 1 or self.rolling < 1:
            raise ConfigError(
                f"throttle detection needs threshold > 1 and windows >= 1; got threshold="
                f"{self.threshold}, baseline_windows={self.baseline_windows}, "
                f"rolling={self.rolling}"
            )

    def window(self) -> float:
        return self.window_s or min(max(self.seconds / 30.0, 0.25), 10.0)


@dataclass(frozen=True, kw_only=True)
class ThrottleVerdict:
    throttled: bool
    baseline_ms: float
    max_ratio: float
    first_window: int | None
    """Index of the first window whose rolling median crossed the threshold."""


@dataclass(frozen=True, kw_only=True)
class SustainedResult:
    windows: list[dict[str, Any]]
    samples_ms: tuple[float, ...] = field(repr=False)
    verdict: ThrottleVerdict
    sensors_read: dict[str, bool]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50))

    def to_dict(self, burst_p50: float | None = None) -> dict[str, Any]:
        v = self.verdict
        first = None if v.first_window is None else self.windows[v.first_window]["t_s"]
        data = {
            "seconds": self.windows[-1]["t_s"] if self.windows else 0.0,
            "n": len(self.samples_ms),
            "p50_ms": self.p50,
            "p90_ms": float(np.percentile(self.samples_ms, 90)),
            "throttled": v.throttled,
            "baseline_ms": v.baseline_ms,
            "max_ratio": v.max_ratio,
            "throttled_at_s": first,
            "sensors_read": self.sensors_read,
            "windows": self.windows,
        }
        if burst_p50:
            data["burst_p50_ms"] = burst_p50
            data["sustained_over_burst"] = self.p50 / burst_p50
        return data


def detect_throttle(
    window_medians: Sequence[float],
    *,
    threshold: float = 1.10,
    baseline_windows: int = 3,
    rolling: int = 3,
) -> ThrottleVerdict:
    """Throttled when the median of ``rolling`` consecutive windows exceeds ``threshold`` times
    the median of the first ``baseline_windows`` windows."""
    values = np.asarray(window_medians, dtype=np.float64)
    if len(values) == 0:
        return ThrottleVerdict(throttled=False, baseline_ms=0.0, max_ratio=1.0, first_window=None)
    baseline = float(np.median(values[:baseline_windows]))
    width = min(rolling, len(values))
    rolled = np.array([np.median(values[i : i + width]) for i in range(len(values) - width + 1)])
    ratios = rolled / max(baseline, 1e-12)
    over = np.nonzero(ratios > threshold)[0]
    first = int(over[0]) + width - 1 if len(over) else None
    return ThrottleVerdict(
        throttled=first is not None,
        baseline_ms=baseline,
        max_ratio=float(ratios.max()),
        first_window=first,
    )


def run_sustained(
    session: Session,
    feeds: Sequence[Feed],
    config: SustainedConfig,
    *,
    clock: Clock = time.perf_counter,
    sensors: Sensors | None = None,
) -> SustainedResult:
    """Run ``session`` back to back for ``config.seconds``; summarize each window."""
    sensors = sensors or read_sensors
    window = config.window()
    samples: list[float] = []
    windows: list[dict[str, Any]] = []
    start = clock()
    read: dict[str, bool] = {"cpu_freq_mhz": False, "temperature_c": False}
    while (now := clock()) - start < config.seconds:
        chunk = _run_window(session, feeds, len(samples), now + window, clock)
        samples.extend(chunk)
        windows.append(_summary(clock() - start, chunk, sensors(), read))
    verdict = detect_throttle(
        [w["p50_ms"] for w in windows],
        threshold=config.threshold,
        baseline_windows=config.baseline_windows,
        rolling=config.rolling,
    )
    return SustainedResult(
        windows=windows, samples_ms=tuple(samples), verdict=verdict, sensors_read=read
    )


def _run_window(
    session: Session, feeds: Sequence[Feed], offset: int, until: float, clock: Clock
) -> list[float]:
    chunk: list[float] = []
    while not chunk or clock() < until:
        feed = feeds[(offset + len(chunk)) % len(feeds)]
        t0 = clock()
        session.run(feed)
        chunk.append((clock() - t0) * 1e3)
    return chunk


def _summary(
    t: float, chunk: list[float], sensed: dict[str, float | None], read: dict[str, bool]
) -> dict[str, Any]:
    for key, value in sensed.items():
        read[key] = read.get(key, False) or value is not None
    return {
        "t_s": t,
        "n": len(chunk),
        "p50_ms": float(np.median(chunk)),
        "p90_ms": float(np.percentile(chunk, 90)),
        **sensed,
    }


def read_sensors() -> dict[str, float | None]:
    """Mean current CPU frequency (MHz) of the cores we may use, hottest thermal zone (deg C)."""
    return {"cpu_freq_mhz": _cpu_freq_mhz(), "temperature_c": _temperature_c()}


def _cpu_freq_mhz() -> float | None:
    import os

    values = [
        _read_number(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq")
        for c in sorted(os.sched_getaffinity(0))
    ]
    found = [v for v in values if v is not None]
    return float(np.mean(found)) / 1e3 if found else None


def _temperature_c() -> float | None:
    values = [_read_number(p) for p in glob.glob("/sys/class/thermal/thermal_zone*/temp")]
    found = [v for v in values if v is not None]
    return max(found) / 1e3 if found else None


def _read_number(path: str) -> float | None:
    try:
        with open(path, encoding="ascii") as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None
