"""Running a cascade in process: the small model answers, the gate picks what to escalate.

A request may hold a batch; the gate decides per sample along the first axis and only the
escalated samples go to the large model. Answers carry who gave them: ``small``, ``large``, or
``small_fallback`` (escalation was needed but the large model could not answer in time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.cascade.artifact import Gate, LoadedCascade, load_cascade
from edgetune.core.model import TensorSpec
from edgetune.runtimes import Runtime, Session, SessionOptions, get_runtime

__all__ = ["CascadeAnswer", "CascadeRunner", "LocalAnswer", "merge_rows", "take_rows"]

Feed = Mapping[str, np.ndarray]
SMALL, LARGE, FALLBACK = "small", "large", "small_fallback"


def take_rows(feed: Feed, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The samples of ``feed`` where ``mask`` is true (first axis)."""
    return {name: np.ascontiguousarray(array[mask]) for name, array in feed.items()}


def merge_rows(base: np.ndarray, replacement: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``base`` with the rows under ``mask`` replaced, in order, by ``replacement``."""
    merged = np.array(base, copy=True)
    merged[mask] = replacement.reshape((int(mask.sum()), *merged.shape[1:]))
    return merged


@dataclass(frozen=True, kw_only=True)
class LocalAnswer:
    """The small model's answer and the gate's decision, before any escalation."""

    output: np.ndarray
    scores: np.ndarray
    escalate: np.ndarray

    @property
    def needs_large(self) -> bool:
        return bool(self.escalate.any())


@dataclass(frozen=True, kw_only=True)
class CascadeAnswer:
    """The cascade's answer per sample and who gave it."""

    output: np.ndarray
    scores: np.ndarray
    escalated: np.ndarray
    sources: list[str]
    fallback_reason: str | None = None

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not None

    @classmethod
    def resolve(
        cls, local: LocalAnswer, large_output: np.ndarray | None, reason: str | None = None
    ) -> CascadeAnswer:
        """Merge the large model's rows in, or flag the escalated rows as local fallbacks."""
        escalated = local.escalate
        if large_output is not None and escalated.any():
            output = merge_rows(local.output, large_output, escalated)
            sources = [LARGE if e else SMALL for e in escalated]
            reason = None
        else:
            output = local.output
            sources = [FALLBACK if e else SMALL for e in escalated]
            reason = reason if escalated.any() else None
        return cls(
            output=output,
            scores=local.scores,
            escalated=escalated,
            sources=sources,
            fallback_reason=reason,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output.tolist(),
            "prediction": self.output.reshape(len(self.output), -1).argmax(axis=1).tolist(),
            "confidence": [float(s) for s in self.scores],
            "escalated": [bool(e) for e in self.escalated],
            "answered_by": self.sources,
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
        }


class CascadeRunner:
    """Sessions for a loaded cascade; thread-safe (ONNX Runtime sessions run concurrently)."""

    def __init__(
        self,
        cascade: LoadedCascade | Path | str,
        *,
        runtime: Runtime | str | None = None,
        options: SessionOptions | None = None,
        load_large: bool = True,
    ) -> None:
        self.cascade = cascade if isinstance(cascade, LoadedCascade) else load_cascade(cascade)
        rt = get_runtime(runtime)
        options = options or SessionOptions()
        self._small: Session = rt.session(self.cascade.small, options)
        self._large: Session | None = (
            rt.session(self.cascade.large, options) if load_large else None
        )

    @property
    def gate(self) -> Gate:
        return self.cascade.spec.gate

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.cascade.small.inputs

    @property
    def output_name(self) -> str:
        return self.cascade.small.outputs[0].name

    def local(self, feed: Feed) -> LocalAnswer:
        output = np.asarray(self._small.run(feed)[0])
        output = output.reshape(1, -1) if output.ndim == 1 else output
        scores = self.gate.scores(output)
        return LocalAnswer(output=output, scores=scores, escalate=self.gate.escalate(scores))

    def large(self, feed: Feed) -> np.ndarray:
        if self._large is None:
            raise RuntimeError("this runner was created with load_large=False")
        return np.asarray(self._large.run(feed)[0])

    def predict(self, feed: Feed) -> CascadeAnswer:
        """The whole cascade in process: small model, gate, large model for escalated rows."""
        local = self.local(feed)
        if not local.needs_large:
            return CascadeAnswer.resolve(local, None)
        return CascadeAnswer.resolve(local, self.large(take_rows(feed, local.escalate)))
