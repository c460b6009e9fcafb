"""Task metrics: higher is better, in the metric's own units (fractions stay in [0, 1]).

* ``top1``: argmax of the first output against ``labels``.
* ``fidelity``: agreement with the float32 model's outputs (mean cosine similarity, with SQNR
  in dB and top-1 agreement as details); needs a reference model, no labels.
* ``package.module:function(outputs, labels) -> float``: a user callable. ``outputs`` maps
  each output name to an array whose first axis indexes samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgetune.core.data import resolve_callable
from edgetune.core.registry import Registry
from edgetune.errors import DataError, MetricError

__all__ = ["Metric", "MetricValue", "RunOutputs", "get_metric", "metric_names"]


@dataclass(frozen=True, kw_only=True)
class RunOutputs:
    """Outputs of one model over a dataset: ``per_sample[i][k]`` is output ``k`` of sample ``i``."""

    names: list[str]
    per_sample: list[list[np.ndarray]]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.per_sample)

    def stacked(self, index: int = 0) -> np.ndarray:
        """Output ``index`` of every sample, stacked; a size-1 batch axis is dropped."""
        parts = [np.asarray(s[index]) for s in self.per_sample]
        if parts and all(p.ndim > 0 and p.shape[0] == 1 for p in parts):
            parts = [p[0] for p in parts]
        try:
            return np.stack(parts)
        except ValueError:
            raise MetricError(
                f"output {self.names[index]!r} changes shape between samples; use a metric "
                "callable that handles a list of arrays"
            ) from None

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: self.stacked(i) for i, name in enumerate(self.names)}


@dataclass(frozen=True, kw_only=True)
class MetricValue:
    name: str
    value: float
    details: dict[str, float] = field(default_factory=dict)


class Metric(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_labels(self) -> bool: ...

    @property
    def needs_reference(self) -> bool: ...

    def __call__(self, outputs: RunOutputs, reference: RunOutputs | None) -> MetricValue: ...


@dataclass(frozen=True)
class Top1:
    name: str = "top1"
    needs_labels: bool = True
    needs_reference: bool = False

    def __call__(self, outputs: RunOutputs, reference: RunOutputs | None) -> MetricValue:
        labels = _require_labels(outputs, self.name)
        logits = outputs.stacked(0)
        predictions = logits.reshape(len(logits), -1).argmax(axis=1)
        truth = np.asarray(labels).reshape(-1)
        return MetricValue(name=self.name, value=float(np.mean(predictions == truth)))


@dataclass(frozen=True)
class Fidelity:
    """Agreement with the reference model; ``value`` is the mean cosine similarity."""

    name: str = "fidelity"
    needs_labels: bool = False
    needs_reference: bool = True

    def __call__(self, outputs: RunOutputs, reference: RunOutputs | None) -> MetricValue:
        if reference is None:
            raise MetricError(
                "the fidelity metric compares with the float32 model; pass a reference model "
                "(--reference FP32.onnx)"
            )
        got = _flat(outputs.stacked(0))
        want = _flat(reference.stacked(0))
        if got.shape != want.shape:
            raise MetricError(
                f"fidelity: outputs have shape {got.shape} but the reference has {want.shape}; "
                "compare models with the same outputs"
            )
        cos = _cosine_rows(got, want)
        return MetricValue(
            name=self.name, value=float(cos.mean()), details=_fidelity_details(got, want, cos)
        )


def _fidelity_details(got: np.ndarray, want: np.ndarray, cos: np.ndarray) -> dict[str, float]:
    noise = float(np.sum((got - want) ** 2))
    signal = float(np.sum(want**2))
    sqnr = float("inf") if noise == 0 else 10.0 * float(np.log10(max(signal, 1e-30) / noise))
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "sqnr_db": sqnr,
        "top1_agreement": float(np.mean(got.argmax(axis=1) == want.argmax(axis=1))),
        "max_abs_diff": float(np.max(np.abs(got - want))),
    }


def _flat(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64).reshape(len(array), -1)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.where(both_zero, 1.0, cos)


@dataclass(frozen=True)
class CallableMetric:
    """A user metric ``fn(outputs: dict[str, ndarray], labels) -> float``, higher is better."""

    name: str
    func: Callable[[Mapping[str, np.ndarray], Any], Any]
    needs_labels: bool = False
    needs_reference: bool = False

    def __call__(self, outputs: RunOutputs, reference: RunOutputs | None) -> MetricValue:
        try:
            value = self.func(outputs.as_dict(), outputs.labels)
        except Exception as exc:  # user code
            raise MetricError(f"metric {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MetricError(
                f"metric {self.name!r} returned {type(value).__name__}; it must return a number "
                "where higher is better"
            ) from None
        if not np.isfinite(number):
            raise MetricError(f"metric {self.name!r} returned {number}; it must be finite")
        return MetricValue(name=self.name, value=number)


def _require_labels(outputs: RunOutputs, metric: str) -> np.ndarray:
    if outputs.labels is None:
        raise DataError(
            f"the {metric} metric needs labels; add a 'labels' array to the dataset, or use "
            "--metric fidelity, which needs none"
        )
    if len(outputs.labels) != len(outputs):
        raise DataError(
            f"the dataset has {len(outputs.labels)} labels for {len(outputs)} samples; give "
            "one label per sample"
        )
    return outputs.labels


_METRICS: Registry[Metric] = Registry("metric")
_METRICS.add("top1", Top1())
_METRICS.add("fidelity", Fidelity())


def get_metric(spec: str | Metric | Callable[..., Any]) -> Metric:
    """A metric by name, ``package.module:function``, a Metric, or a plain callable."""
    if not isinstance(spec, str):
        if hasattr(spec, "needs_reference"):
            return spec  # type: ignore[return-value]
        return CallableMetric(name=getattr(spec, "__name__", "custom"), func=spec)
    if spec in _METRICS:
        return _METRICS.get(spec)
    if ":" in spec:
        try:
            func = resolve_callable(spec, "metric")
        except DataError as exc:
            raise MetricError(str(exc)) from None
        return CallableMetric(name=spec, func=func)
    raise MetricError(
        f"unknown metric {spec!r}; choose one of: {', '.join(_METRICS.names())}, or give "
        "'package.module:function'"
    )


def metric_names() -> list[str]:
    return _METRICS.names()
