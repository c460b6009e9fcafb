"""INT8 settings: what a user may ask for, and the concrete candidates edgetune tries.

Which settings keep a model accurate and fast differs per model and per CPU: activation
signedness, per-channel weights, reduce_range, which operator types to quantize, static or
dynamic activations. edgetune therefore builds a short list of candidates that are *safe for the
target instruction set by construction* (see :mod:`edgetune.core.isa`), measures each one, and
keeps the fastest among the most faithful. A user can pin any setting; pinning one that can
saturate on the target is allowed but flagged in the report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from edgetune.core.isa import Isa
from edgetune.errors import ConfigError
from edgetune.transforms.calibrate import CalibMethod

__all__ = [
    "ActType",
    "QuantMode",
    "QuantSettings",
    "QuantizeConfig",
    "WeightType",
    "candidate_settings",
]

COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
"""Operators whose INT8 kernels do the work; everything else only moves data."""
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "Gather")
"""Operators ONNX Runtime quantizes dynamically (it has no dynamic Gemm). Gather is there for
embedding tables, often most of a transformer's bytes (47 of MiniLM's 90 MB)."""


class QuantMode(str, Enum):
    AUTO = "auto"
    STATIC = "static"
    DYNAMIC = "dynamic"


class ActType(str, Enum):
    U8 = "u8"
    S8 = "s8"


class WeightType(str, Enum):
    S8 = "s8"
    U8 = "u8"


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    """What the user asks for; ``None`` means "let edgetune choose for the target"."""

    mode: QuantMode = QuantMode.AUTO
    method: CalibMethod | None = None
    per_channel: bool | None = None
    target_isa: Isa | None = None
    """Instruction set of the CPU the model will run on; ``None``: this machine's."""
    activations: ActType | None = None
    weights: WeightType | None = None
    reduce_range: bool | None = None
    op_types: tuple[str, ...] | None = None
    exclude_nodes: tuple[str, ...] = ()
    percentile: float = 99.999
    calib_limit: int | None = 512
    """Use at most this many calibration samples."""
    selection_samples: int = 64
    """Calibration samples held out to compare candidates (never used to fit ranges)."""
    tolerance: float = 0.002
    """Candidates within this much fidelity (cosine) of the best count as equally accurate."""
    preprocess: bool = True
    """Run ONNX Runtime's pre-processing (shape inference, BatchNorm folding) first."""

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile < 100.0:
            raise ConfigError(
                f"The 'percentile' parameter of QuantizeConfig must be in (50, 100); got "
                f"{self.percentile}. Use e.g. 99.99."
            )
        if self.calib_limit is not None and self.calib_limit < 1:
            raise ConfigError(
                f"The 'calib_limit' parameter of QuantizeConfig must be >= 1; got {self.calib_limit}."
            )
        if self.tolerance < 0:
            raise ConfigError(
                f"The 'tolerance' parameter of QuantizeConfig must be >= 0; got {self.tolerance}."
            )


@dataclass(frozen=True, kw_only=True)
class QuantSettings:
    """One concrete way to quantize a model."""

    mode: QuantMode
    activations: ActType
    weights: WeightType
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...]
    method: CalibMethod = CalibMethod.MINMAX
    exclude_nodes: tuple[str, ...] = ()
    forced: tuple[str, ...] = field(default=(), compare=False)
    """Settings the user pinned (reported, never second-guessed)."""

    def label(self) -> str:
        bits = "7-bit" if self.reduce_range else "8-bit"
        chan = "per-channel" if self.per_channel else "per-tensor"
        ops = ",".join(self.op_types) if self.op_types else "all"
        calib = f" {self.method.value}" if self.mode is QuantMode.STATIC else ""
        acts = self.activations.value if self.mode is QuantMode.STATIC else "u8(dyn)"
        return f"{self.mode.value} {acts}/{self.weights.value} {bits} {chan}{calib} [{ops}]"

    def saturation_free_on(self, isa: Isa) -> bool:
        """True when no u8 x s8 product pair can overflow 16 bits on ``isa``."""
        if not isa.u8s8_saturates:
            return True
        return self.weights is WeightType.U8 or self.reduce_range

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "activations": self.activations.value,
            "weights": self.weights.value,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "op_types": list(self.op_types),
            "calibration": self.method.value,
            "exclude_nodes": list(self.exclude_nodes),
            "label": self.label(),
            "user_pinned": list(self.forced),
        }


def _type_pairs(isa: Isa) -> list[tuple[ActType, WeightType, bool]]:
    """(activations, weights, reduce_range) triples safe and fast on ``isa``, best first."""
    if isa.u8s8_saturates:
        return [(ActType.U8, WeightType.S8, True), (ActType.U8, WeightType.U8, False)]
    if isa is Isa.ARM64:
        return [(ActType.S8, WeightType.S8, False), (ActType.U8, WeightType.U8, False)]
    return [(ActType.U8, WeightType.S8, False), (ActType.S8, WeightType.S8, False)]


def candidate_settings(
    config: QuantizeConfig, isa: Isa, model_ops: Iterable[str]
) -> list[QuantSettings]:
    """The first-round candidates for ``config`` on ``isa`` (pinned settings applied to all)."""
    ops = set(model_ops)
    modes = _modes(config, ops)
    out: list[QuantSettings] = []
    for mode in modes:
        for acts, weights, reduce in _type_pairs(isa):
            for op_types in _op_sets(config, mode, ops):
                base = QuantSettings(
                    mode=mode,
                    # dynamic quantization in ONNX Runtime always uses u8 activations
                    activations=ActType.U8 if mode is QuantMode.DYNAMIC else acts,
                    weights=weights,
                    per_channel=True,
                    reduce_range=reduce,
                    op_types=op_types,
                    method=config.method or CalibMethod.MINMAX,
                    exclude_nodes=tuple(config.exclude_nodes),
                )
                out.append(_pin(base, config))
    return _unique(out)


def _modes(config: QuantizeConfig, ops: set[str]) -> list[QuantMode]:
    if config.mode is not QuantMode.AUTO:
        return [config.mode]
    has_dynamic_ops = bool(ops & {"MatMul", "Attention", "LSTM"})
    return [QuantMode.STATIC, QuantMode.DYNAMIC] if has_dynamic_ops else [QuantMode.STATIC]


def _op_sets(config: QuantizeConfig, mode: QuantMode, ops: set[str]) -> list[tuple[str, ...]]:
    if config.op_types is not None:
        return [tuple(config.op_types)]
    if mode is QuantMode.DYNAMIC:
        return [tuple(o for o in DYNAMIC_OPS if o in ops)]
    compute = tuple(o for o in COMPUTE_OPS if o in ops)
    # () means "every operator ONNX Runtime can quantize": fewer Q/DQ hops between int8 ops,
    # but also int8 data movement ops that may lose accuracy; both are measured.
    return [compute, ()] if compute else [()]


def _pin(settings: QuantSettings, config: QuantizeConfig) -> QuantSettings:
    pinned: dict[str, Any] = {}
    if config.activations is not None:
        pinned["activations"] = config.activations
    if config.weights is not None:
        pinned["weights"] = config.weights
    if config.reduce_range is not None:
        pinned["reduce_range"] = config.reduce_range
    if config.per_channel is not None:
        pinned["per_channel"] = config.per_channel
    if config.method is not None:
        pinned["method"] = config.method
    return replace(settings, **pinned, forced=tuple(sorted(pinned)))


def _unique(items: list[QuantSettings]) -> list[QuantSettings]:
    seen: list[QuantSettings] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def refinements(best: QuantSettings, config: QuantizeConfig) -> list[QuantSettings]:
    """Second-round variants of the best candidate: other calibration methods, per-tensor."""
    out: list[QuantSettings] = []
    if best.mode is QuantMode.STATIC and config.method is None:
        out += [replace(best, method=m) for m in CalibMethod if m is not best.method]
    if config.per_channel is None and best.per_channel:
        out.append(replace(best, per_channel=False))
    return out
