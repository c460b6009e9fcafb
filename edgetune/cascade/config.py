"""What a cascade build is asked to do: the target, the metric, the costs, the data split."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edgetune.cascade.calibration import ScoreKind
from edgetune.cascade.threshold import Constraint, Risk
from edgetune.errors import ConfigError
from edgetune.runtimes import SessionOptions

__all__ = ["CascadeConfig", "Costs", "GateMetric", "Target"]


class GateMetric(str, Enum):
    """Per-sample correctness the gate is tuned for."""

    TOP1 = "top1"
    """The argmax equals the label (needs labels)."""
    AGREEMENT = "agreement"
    """The argmax equals the large model's argmax (needs no labels)."""


def _fraction(owner: str, name: str, value: float | None, *, closed: bool = True) -> None:
    if value is None:
        return
    ok = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ConfigError(f"the {name!r} parameter of {owner} must be in {interval}; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Target:
    """At least one of: a metric floor or a drop below the large model; an escalation cap."""

    min_metric: float | None = None
    max_drop: float | None = None
    max_escalation: float | None = None

    def validated(self) -> Target:
        for name in ("min_metric", "max_drop", "max_escalation"):
            _fraction("Target", name, getattr(self, name))
        if self.min_metric is not None and self.max_drop is not None:
            raise ConfigError(
                "give either a target metric or a maximum drop, not both "
                f"(got min_metric={self.min_metric}, max_drop={self.max_drop})"
            )
        if self.min_metric is None and self.max_drop is None and self.max_escalation is None:
            raise ConfigError(
                "a cascade needs a target; give --target-metric X, --max-drop D "
                "or --max-escalation R"
            )
        return self

    def constraints(self) -> list[Constraint]:
        out = []
        if self.min_metric is not None:
            out.append(Constraint(risk=Risk.ERROR, limit=1.0 - self.min_metric))
        if self.max_drop is not None:
            out.append(Constraint(risk=Risk.HARM, limit=self.max_drop))
        if self.max_escalation is not None:
            out.append(Constraint(risk=Risk.ESCALATION, limit=self.max_escalation))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_metric": self.min_metric,
            "max_drop": self.max_drop,
            "max_escalation": self.max_escalation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        return cls(
            min_metric=data.get("min_metric"),
            max_drop=data.get("max_drop"),
            max_escalation=data.get("max_escalation"),
        )


@dataclass(frozen=True, kw_only=True)
class Costs:
    """Milliseconds per request for each part; the expected cost follows from the escalation."""

    small_ms: float
    large_ms: float
    network_ms: float = 0.0
    measured: bool = False
    """Whether small_ms and large_ms were measured here rather than given."""

    def expected_ms(self, escalation: float) -> float:
        return self.small_ms + escalation * (self.network_ms + self.large_ms)

    @property
    def large_only_ms(self) -> float:
        return self.network_ms + self.large_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "small_ms": self.small_ms,
            "large_ms": self.large_ms,
            "network_ms": self.network_ms,
            "measured": self.measured,
        }


@dataclass(frozen=True, kw_only=True)
class CascadeConfig:
    """How to build a cascade. ``score=None`` picks the best score on the fit split."""

    target: Target
    metric: GateMetric = GateMetric.TOP1
    confidence: float = 0.95
    """Probability, over the certify split, that the chosen threshold meets the target."""
    score: ScoreKind | None = None
    fit_fraction: float = 0.4
    """Share of the data used to fit the gate when no separate fit data is given."""
    seed: int = 0
    """Seed of the random fit/certify split."""
    grid_size: int = 200
    bins: int = 15
    """Bins of the reliability diagram and the ECE."""
    cost_small_ms: float | None = None
    cost_large_ms: float | None = None
    cost_network_ms: float = 0.0
    session: SessionOptions = field(default_factory=SessionOptions)

    def validated(self) -> CascadeConfig:
        self.target.validated()
        _fraction("CascadeConfig", "confidence", self.confidence, closed=False)
        _fraction("CascadeConfig", "fit_fraction", self.fit_fraction, closed=False)
        if not isinstance(self.metric, GateMetric):
            raise ConfigError(
                f"the 'metric' parameter of CascadeConfig must be one of "
                f"{[m.value for m in GateMetric]}; got {self.metric!r}"
            )
        if self.grid_size < 2 or self.bins < 2:
            raise ConfigError(
                f"grid_size and bins must be at least 2; got {self.grid_size}, {self.bins}"
            )
        for name in ("cost_small_ms", "cost_large_ms", "cost_network_ms"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(
                    f"the {name!r} parameter of CascadeConfig must be >= 0 ms; got {value!r}"
                )
        return self
