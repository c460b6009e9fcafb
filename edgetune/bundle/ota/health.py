"""On-device health check and metrics: run the installed model on a probe set.

The health check is what decides, on the device, whether a freshly installed model stays: it
must load in the runtime, accept inputs shaped as its manifest says, and return finite outputs
of the declared count. The same run gives the metrics the device reports for the canary
comparison: median latency, errors (wrong labels when the probe set has labels, else non-finite
outputs), mean top-class confidence, and, for a cascade, the share of samples below its gate
threshold (the escalation rate).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.bundle.manifest import Manifest
from edgetune.errors import DataError

__all__ = ["ProbeData", "ProbeResult", "load_probe", "probe_model"]


@dataclass(frozen=True)
class ProbeData:
    """Inputs (named after the model's inputs, batch first) and optional labels."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def window(self, start: int, count: int) -> ProbeData:
        """``count`` samples from ``start``, wrapping around: each device its own traffic."""
        index = (np.arange(count) + start) % len(self)
        labels = None if self.labels is None else self.labels[index]
        return ProbeData({k: v[index] for k, v in self.feeds.items()}, labels)


def load_probe(path: Path | str, limit: int | None = None) -> ProbeData:
    try:
        with np.load(Path(path)) as data:
            arrays = {k: data[k][:limit] for k in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read probe data {str(path)!r}: {exc}; give an .npz with "
                        "arrays named after the model's inputs (and optional 'labels')") from None
    labels = arrays.pop("labels", None)
    if not arrays:
        raise DataError(f"probe data {str(path)!r} has no input arrays")
    return ProbeData(arrays, labels)


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    ok: bool
    reason: str = ""
    samples: int = 0
    errors: int = 0
    latency_ms: float | None = None
    confidence: float | None = None
    escalation: float | None = None

    def metrics(self) -> dict[str, Any]:
        return {"samples": self.samples, "errors": self.errors, "latency_ms": self.latency_ms,
                "confidence": self.confidence, "escalation": self.escalation}


def open_session(model_dir: Path, manifest: Manifest) -> Any:
    """An ONNX Runtime session (one thread) for the bundle's entrypoint model."""
    from edgetune.load import load
    from edgetune.runtimes import get_runtime
    from edgetune.runtimes.base import SessionOptions

    model = load(model_dir.joinpath(*manifest.entrypoint.split("/")))
    return get_runtime("onnxruntime").session(model, SessionOptions(threads=1))


def probe_model(session: Any, manifest: Manifest, data: ProbeData | None) -> ProbeResult:
    """Run every probe sample (batch of one) and check and measure the outputs."""
    spec = next((m for m in manifest.models if m.get("path") == manifest.entrypoint), {})
    feeds = _feeds(spec, data)
    outputs, times = [], []
    try:
        for feed in feeds:
            start = time.perf_counter()
            outputs.append(session.run(feed))
            times.append((time.perf_counter() - start) * 1e3)
    except Exception as exc:  # any runtime failure is a failed health check, with its text
        return ProbeResult(ok=False, reason=f"model failed to run: {str(exc)[:200]}")
    problem = _check_outputs(outputs, len(spec.get("outputs", [])) or None)
    if problem:
        return ProbeResult(ok=False, reason=problem)
    return _measure(outputs, times, data, _threshold(manifest))


def _feeds(spec: dict[str, Any], data: ProbeData | None) -> list[dict[str, np.ndarray]]:
    if data is not None:
        return [{k: v[i:i + 1] for k, v in data.feeds.items()} for i in range(len(data))]
    return [{i["name"]: np.zeros([d if isinstance(d, int) else 1 for d in (i["shape"] or [1])],
                                 dtype=np.dtype(i["dtype"])) for i in spec.get("inputs", [])}]


def _check_outputs(outputs: list[list[np.ndarray]], expected: int | None) -> str:
    for out in outputs:
        if expected is not None and len(out) != expected:
            return f"model returned {len(out)} outputs, its manifest declares {expected}"
        for array in out:
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                return "model returned NaN or infinite outputs"
    return ""


def _threshold(manifest: Manifest) -> float | None:
    cascade = manifest.extra.get("cascade")
    value = cascade.get("threshold") if isinstance(cascade, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _measure(outputs: list[list[np.ndarray]], times: list[float], data: ProbeData | None,
             threshold: float | None) -> ProbeResult:
    first = np.concatenate([o[0].reshape(1, -1) for o in outputs]).astype(np.float64)
    probs = np.exp(first - first.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    confidence = probs.max(axis=1)
    errors = 0
    if data is not None and data.labels is not None and first.shape[1] > 1:
        errors = int(np.sum(first.argmax(axis=1) != data.labels.reshape(-1)))
    escalation = float(np.mean(confidence < threshold)) if threshold is not None else None
    return ProbeResult(ok=True, samples=len(outputs), errors=errors,
                       latency_ms=float(statistics.median(times)),
                       confidence=float(confidence.mean()), escalation=escalation)
