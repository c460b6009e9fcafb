"""Service metrics in the Prometheus text format (version 0.0.4), with no client library.

Counters and histograms are updated from the event loop and read by ``GET /metrics``; a lock
keeps a scrape consistent with concurrent updates.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "MetricSet"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + body + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


class Counter:
    """A monotonically increasing count, optionally split by labels."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] += amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def samples(self) -> Iterable[str]:
        if not self._values:
            yield f"{self.name} 0"
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(key)} {_number(value)}"


class Gauge:
    """A value that goes up and down; ``None`` is left out of the scrape."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.current: float | None = None

    def set(self, value: float | None) -> None:
        self.current = value

    def samples(self) -> Iterable[str]:
        if self.current is not None:
            yield f"{self.name} {_number(self.current)}"


class Histogram:
    """Cumulative buckets, sum and count of observations (seconds)."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        self.name, self.help = name, help_text
        self.buckets = tuple(buckets)
        self._counts = [0] * len(self.buckets)
        self.count, self.sum = 0, 0.0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self._counts[i] += 1
        self.count += 1
        self.sum += value

    def samples(self) -> Iterable[str]:
        for edge, count in zip(self.buckets, self._counts, strict=True):
            yield f'{self.name}_bucket{{le="{_number(edge)}"}} {count}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_number(self.sum)}"
        yield f"{self.name}_count {self.count}"


Metric = Counter | Gauge | Histogram


class MetricSet:
    """Named metrics rendered together; a lock guards updates against a scrape."""

    def __init__(self, metrics: Sequence[Metric]) -> None:
        self._metrics = {m.name: m for m in metrics}
        self.lock = threading.Lock()

    def __getitem__(self, name: str) -> Metric:
        return self._metrics[name]

    def counter(self, name: str) -> Counter:
        metric = self._metrics[name]
        assert isinstance(metric, Counter)  # internal wiring, not user input
        return metric

    def histogram(self, name: str) -> Histogram:
        metric = self._metrics[name]
        assert isinstance(metric, Histogram)  # internal wiring, not user input
        return metric

    def gauge(self, name: str) -> Gauge:
        metric = self._metrics[name]
        assert isinstance(metric, Gauge)  # internal wiring, not user input
        return metric

    def render(self) -> str:
        lines = []
        with self.lock:
            for metric in self._metrics.values():
                lines.append(f"# HELP {metric.name} {metric.help}")
                lines.append(f"# TYPE {metric.name} {metric.kind}")
                lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
