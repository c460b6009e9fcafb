"""Throttle detection on synthetic workloads: flat, slowing, and a single spike."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from edgetune.benchmark.sustained import (
    SustainedConfig,
    detect_throttle,
    read_sensors,
    run_sustained,
)
from edgetune.errors import ConfigError


def test_flat_workload_is_not_throttled() -> None:
    verdict = detect_throttle([1.0, 1.02, 0.98, 1.01, 1.0, 0.99, 1.03, 1.0])
    assert not verdict.throttled
    assert verdict.first_window is None
    assert verdict.max_ratio < 1.10


def test_slowing_workload_is_throttled_at_the_right_window() -> None:
    medians = [1.0] * 10 + [1.3] * 10  # 30% slower from window 10 on
    verdict = detect_throttle(medians, threshold=1.10, baseline_windows=3, rolling=3)
    assert verdict.throttled
    assert verdict.baseline_ms == pytest.approx(1.0)
    assert verdict.max_ratio == pytest.approx(1.3)
    assert verdict.first_window == 11  # the rolling median of windows 9-11 is the first above 1.10


def test_a_single_spike_is_not_throttling() -> None:
    verdict = detect_throttle([1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0], rolling=3)
    assert not verdict.throttled


def test_just_below_the_threshold_is_not_throttled() -> None:
    assert not detect_throttle([1.0] * 5 + [1.09] * 5).throttled
    assert detect_throttle([1.0] * 5 + [1.12] * 5).throttled


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _SlowingSession:
    """A synthetic workload that gets slower the longer it runs, like a heating phone."""

    def __init__(self, clock: _Clock, start_ms: float, slowdown_per_s: float) -> None:
        self.clock, self.start_ms, self.slowdown = clock, start_ms, slowdown_per_s
        self.output_names = ["y"]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.clock.now += self.start_ms * (1.0 + self.slowdown * self.clock.now) / 1e3
        return [np.zeros(1)]


def _sensors() -> dict[str, float | None]:
    return {"cpu_freq_mhz": 2000.0, "temperature_c": None}


FEEDS = [{"x": np.zeros(1, np.float32)}]


def test_sustained_run_detects_a_slowing_workload() -> None:
    clock = _Clock()
    session = _SlowingSession(clock, start_ms=2.0, slowdown_per_s=0.02)  # +2% per second
    result = run_sustained(
        session, FEEDS, SustainedConfig(seconds=30.0, window_s=1.0), clock=clock, sensors=_sensors
    )
    assert result.verdict.throttled
    assert len(result.windows) == pytest.approx(30, abs=1)
    d = result.to_dict(burst_p50=2.0)
    assert d["throttled"] is True
    assert 5.0 < d["throttled_at_s"] < 10.0  # 1.10x is crossed near 5 s, then a rolling window
    assert d["sustained_over_burst"] > 1.1
    assert d["sensors_read"] == {"cpu_freq_mhz": True, "temperature_c": False}
    assert d["windows"][0]["cpu_freq_mhz"] == 2000.0


def test_sustained_run_on_a_steady_workload() -> None:
    clock = _Clock()
    session = _SlowingSession(clock, start_ms=2.0, slowdown_per_s=0.0)
    result = run_sustained(
        session, FEEDS, SustainedConfig(seconds=10.0), clock=clock, sensors=_sensors
    )
    assert not result.verdict.throttled
    assert result.p50 == pytest.approx(2.0)
    assert result.to_dict(burst_p50=2.0)["sustained_over_burst"] == pytest.approx(1.0)


def test_sensors_read_what_the_machine_exposes() -> None:
    sensed = read_sensors()
    assert set(sensed) == {"cpu_freq_mhz", "temperature_c"}
    assert all(v is None or v > 0 for v in sensed.values())


@pytest.mark.parametrize("kwargs", [{"seconds": 0.0}, {"threshold": 1.0}, {"window_s": -1.0}])
def test_sustained_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        SustainedConfig(**kwargs)  # type: ignore[arg-type]
