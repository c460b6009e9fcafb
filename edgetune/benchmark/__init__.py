"""benchmark: latency and memory of models on runtimes, measured side by side."""

from edgetune.benchmark.latency import LatencyConfig, LatencyStats, measure_interleaved

__all__ = ["LatencyConfig", "LatencyStats", "measure_interleaved"]
