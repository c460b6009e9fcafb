"""Plans: a precision and its settings for every quantizable layer, as a versioned file.

A plan is what the mixed-precision search produces and what ``edgetune quantize --plan`` applies,
so a choice made once (by the search, or edited by hand) is rebuilt the same way later. It names
layers by their node names in the *prepared* model: the model after ONNX Runtime's
pre-processing (when ``preprocess`` is on) with every node given a unique name.

Precisions (what the runtime stores and computes for the layer):

* ``fp32``: untouched. ``fp16``: weights stored in float16, cast back at load (half the bytes,
  float compute; ONNX Runtime folds the cast into the constant).
* ``int8``: static INT8 QDQ (weights and activations), with per-layer activation signedness,
  weight type, per-channel or per-tensor weights, 7-bit weights and calibration method.
* ``int8-dynamic``: INT8 weights, activations quantized per run (MatMul); for an embedding
  Gather, a u8 table (one scale) whose gathered rows are dequantized.
* ``int4``: 4-bit weights, block-wise (``block_size``; 0 means one scale per output channel),
  float activations: ``MatMulNBits`` for MatMul, ``GatherBlockQuantized`` for embedding tables,
  a 4-bit ``DequantizeLinear`` for Conv and Gemm.
* ``a16``: INT8 weights with 16-bit activations (QDQ with ONNX Runtime's contrib operators).

``apply_plan`` builds the model; the ONNX Runtime-specific steps live in :mod:`.ort_plan`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.fileio import atomic_write_text
from edgetune.core.isa import Isa, parse_isa
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import ConfigError, DataError
from edgetune.load import load
from edgetune.transforms.calibrate import CalibMethod, TensorStats, intermediate_session
from edgetune.transforms.settings import ActType, WeightType

__all__ = [
    "SCHEMA",
    "LayerChoice",
    "Plan",
    "PlanResult",
    "Precision",
    "Prepared",
    "QuantLayer",
    "apply_plan",
    "find_layers",
    "load_plan",
    "prepare",
    "uniform_plan",
]

log = logging.getLogger(__name__)

SCHEMA = "edgetune.plan/1"
_READABLE = {SCHEMA}


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT8_DYNAMIC = "int8-dynamic"
    INT4 = "int4"
    A16 = "a16"


_SETTINGS: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: (),
    Precision.FP16: (),
    Precision.INT8: ("activations", "weights", "per_channel", "reduce_range", "method"),
    Precision.INT8_DYNAMIC: ("weights", "per_channel", "reduce_range"),
    Precision.INT4: ("block_size", "symmetric", "accuracy_level", "gptq"),
    Precision.A16: ("weights", "per_channel", "method"),
}
"""The settings that mean something for each precision (the only keys a plan file may carry)."""

_OPS: dict[Precision, frozenset[str]] = {
    Precision.FP32: frozenset({"Conv", "Gemm", "MatMul", "Gather"}),
    Precision.FP16: frozenset({"Conv", "Gemm", "MatMul", "Gather"}),
    Precision.INT8: frozenset({"Conv", "Gemm", "MatMul"}),
    Precision.INT8_DYNAMIC: frozenset({"MatMul", "Gather"}),
    Precision.INT4: frozenset({"Conv", "Gemm", "MatMul", "Gather"}),
    Precision.A16: frozenset({"Conv", "Gemm", "MatMul"}),
}
"""Operator types each precision can be applied to."""


@dataclass(frozen=True, kw_only=True)
class LayerChoice:
    """The precision of one layer and the settings that decide its accuracy and speed."""

    precision: Precision = Precision.FP32
    activations: ActType = ActType.U8
    weights: WeightType = WeightType.S8
    per_channel: bool = True
    reduce_range: bool = False
    """7-bit weights: u8 x s8 pairs cannot saturate a 16-bit sum on CPUs without VNNI."""
    method: CalibMethod = CalibMethod.MINMAX
    block_size: int = 32
    """INT4 block length along the reduction axis; 0: one scale per output channel."""
    symmetric: bool = True
    accuracy_level: int = 0
    """MatMulNBits compute type: 0 float, 4 int8 (activations quantized per block)."""
    gptq: bool = False
    """Round 4-bit MatMul weights by GPTQ on the calibration inputs instead of to nearest."""

    def __post_init__(self) -> None:
        if self.gptq and not self.symmetric:
            raise ConfigError("GPTQ rounding is implemented for symmetric int4 blocks; set 'symmetric': true")
        if self.block_size != 0 and (self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise ConfigError(
                f"The 'block_size' of an int4 layer must be 0 (per channel) or a power of two >= 16; "
                f"got {self.block_size}."
            )
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(
                f"The 'accuracy_level' of an int4 layer must be 0..4; got {self.accuracy_level}."
            )

    @property
    def is_quantized(self) -> bool:
        return self.precision is not Precision.FP32

    def label(self) -> str:
        """A short human text, e.g. ``int8 u8/s8 7-bit per-channel entropy``."""
        p = self.precision
        if p is Precision.INT8:
            bits = "7-bit" if self.reduce_range else "8-bit"
            chan = "per-channel" if self.per_channel else "per-tensor"
            return f"int8 {self.activations.value}/{self.weights.value} {bits} {chan} {self.method.value}"
        if p is Precision.INT8_DYNAMIC:
            bits = "7-bit" if self.reduce_range else "8-bit"
            chan = "per-channel" if self.per_channel else "per-tensor"
            return f"int8-dynamic u8/{self.weights.value} {bits} {chan}"
        if p is Precision.INT4:
            block = f"block {self.block_size}" if self.block_size else "per-channel"
            sym = "sym" if self.symmetric else "asym"
            acc = " int8-compute" if self.accuracy_level == 4 else ""
            gptq = " gptq" if self.gptq else ""
            return f"int4 {block} {sym}{gptq}{acc}"
        if p is Precision.A16:
            chan = "per-channel" if self.per_channel else "per-tensor"
            return f"a16 u16/{self.weights.value} {chan} {self.method.value}"
        return p.value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision.value}
        for key in _SETTINGS[self.precision]:
            value = getattr(self, key)
            if key == "gptq" and not value:
                continue  # plans (and their fingerprints) from before GPTQ stay as they were
            out[key] = value.value if isinstance(value, Enum) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "layer") -> LayerChoice:
        """Parse through an allow-list: only the settings of the given precision are accepted."""
        if not isinstance(data, Mapping) or "precision" not in data:
            raise ConfigError(f"{where} must be an object with a 'precision'; got {data!r}")
        precision = _enum(Precision, data["precision"], f"{where}.precision")
        allowed = _SETTINGS[precision]
        extra = sorted(set(data) - {"precision", *allowed})
        if extra:
            raise ConfigError(
                f"{where} has setting(s) {extra} that do not apply to {precision.value}; "
                f"allowed: {list(allowed) or 'none'}"
            )
        kwargs: dict[str, Any] = {"precision": precision}
        for key in allowed:
            if key in data:
                kwargs[key] = _field_value(key, data[key], f"{where}.{key}")
        return cls(**kwargs)


_ENUM_FIELDS: dict[str, type[Enum]] = {
    "activations": ActType, "weights": WeightType, "method": CalibMethod,
}
_BOOL_FIELDS = {"per_channel", "reduce_range", "symmetric", "gptq"}
_INT_FIELDS = {"block_size", "accuracy_level"}


def _field_value(key: str, value: Any, where: str) -> Any:
    if key in _ENUM_FIELDS:
        return _enum(_ENUM_FIELDS[key], value, where)
    if key in _BOOL_FIELDS and isinstance(value, bool):
        return value
    if key in _INT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return value
    kind = "true or false" if key in _BOOL_FIELDS else "an integer"
    raise ConfigError(f"{where} must be {kind}; got {value!r}")


def _enum(kind: type[Enum], value: Any, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(str(m.value) for m in kind)
        raise ConfigError(f"{where} must be one of {known}; got {value!r}") from None


FP32 = LayerChoice()


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Per-layer choices for one model; layers not listed use ``default``."""

    layers: Mapping[str, LayerChoice] = field(default_factory=dict)
    default: LayerChoice = FP32
    target_isa: Isa | None = None
    model_name: str = ""
    model_sha256: str | None = None
    """Fingerprint of the model the plan was made for (a mismatch is logged, not fatal)."""
    preprocess: bool = True
    calib_limit: int | None = 512
    percentile: float = 99.999
    info: Mapping[str, Any] = field(default_factory=dict)
    """Free-form JSON facts (objective, estimates, reasons); stored, never interpreted."""

    def choice(self, layer: str) -> LayerChoice:
        return self.layers.get(layer, self.default)

    def with_layers(self, layers: Mapping[str, LayerChoice], **info: Any) -> Plan:
        return replace(self, layers=dict(layers), info={**self.info, **info})

    def fingerprint(self) -> str:
        """Hash of what decides the built model (``info`` excluded), for caching."""
        data = self.to_dict()
        data.pop("info")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": {"name": self.model_name, "sha256": self.model_sha256},
            "target_isa": self.target_isa.value if self.target_isa else None,
            "preprocess": self.preprocess,
            "calibration": {"limit": self.calib_limit, "percentile": self.percentile},
            "default": self.default.to_dict(),
            "layers": {name: c.to_dict() for name, c in sorted(self.layers.items())},
            "info": dict(self.info),
        }

    def to_json(self) -> str:
        from edgetune.report.schema import jsonable

        return json.dumps(jsonable(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def save(self, path: Path | str) -> Path:
        return atomic_write_text(Path(path), self.to_json(), "plan")

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        return _plan_from_dict(data)


_TOP_KEYS = {"schema", "model", "target_isa", "preprocess", "calibration", "default", "layers", "info"}


def _plan_from_dict(data: Any) -> Plan:
    if not isinstance(data, Mapping) or data.get("schema") not in _READABLE:
        got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
        raise ConfigError(
            f"not an edgetune plan this version reads (schema {got!r}, readable: "
            f"{sorted(_READABLE)}); write plans with 'edgetune optimize --plan'"
        )
    extra = sorted(set(data) - _TOP_KEYS)
    if extra:
        raise ConfigError(f"plan has unknown key(s) {extra}; allowed: {sorted(_TOP_KEYS)}")
    layers = data.get("layers") or {}
    if not isinstance(layers, Mapping):
        raise ConfigError(f"plan 'layers' must map node names to choices; got {type(layers).__name__}")
    model = data.get("model") or {}
    calib = data.get("calibration") or {}
    isa = data.get("target_isa")
    return Plan(
        layers={str(k): LayerChoice.from_dict(v, f"layers[{k!r}]") for k, v in layers.items()},
        default=LayerChoice.from_dict(data.get("default") or {"precision": "fp32"}, "default"),
        target_isa=parse_isa(isa) if isa else None,
        model_name=str(model.get("name") or ""),
        model_sha256=model.get("sha256"),
        preprocess=bool(data.get("preprocess", True)),
        calib_limit=calib.get("limit", 512),
        percentile=float(calib.get("percentile", 99.999)),
        info=dict(data.get("info") or {}),
    )


def load_plan(path: Path | str) -> Plan:
    """Read a plan file through the schema and key allow-lists."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read plan {str(path)!r}: {exc}; give a plan .json file") from None
    return _plan_from_dict(data)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, kw_only=True)
class QuantLayer:
    """A node whose weights a plan can change: Conv, Gemm, MatMul with a constant B, or an
    embedding Gather with a constant table."""

    name: str
    op_type: str
    weight: str
    activation: str
    """The float input the layer reads (for Gather: the indices)."""
    output: str
    weight_shape: tuple[int, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weight_params(self) -> int:
        return int(np.prod(self.weight_shape))

    def supports(self, precision: Precision) -> bool:
        if precision is Precision.INT4 and self.op_type == "MatMul" and len(self.weight_shape) != 2:
            return False
        return self.op_type in _OPS[precision]


def find_layers(model: Model) -> list[QuantLayer]:
    """Every layer a plan can address, in graph order (weights shared by two nodes excluded)."""
    from onnx import helper

    graph = model.proto.graph
    inits = {i.name: tuple(int(d) for d in i.dims) for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    out = []
    for node in graph.node:
        spec = _layer_inputs(node, inits)
        if spec is None or uses.get(spec[0], 0) != 1:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out.append(QuantLayer(name=node.name, op_type=node.op_type, weight=spec[0],
                              activation=spec[1], output=node.output[0],
                              weight_shape=inits[spec[0]], attrs=attrs))
    return out


def _layer_inputs(node: Any, inits: Mapping[str, tuple[int, ...]]) -> tuple[str, str] | None:
    """(weight, activation) input names when ``node`` is a quantizable layer."""
    ins = list(node.input)
    if node.op_type in ("Conv", "Gemm") and len(ins) >= 2 and ins[1] in inits and ins[0] not in inits:
        return ins[1], ins[0]
    if node.op_type == "MatMul" and len(ins) == 2 and ins[1] in inits and ins[0] not in inits:
        return ins[1], ins[0]
    if node.op_type == "Gather" and ins[0] in inits and len(inits[ins[0]]) == 2:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return (ins[0], ins[1]) if axis == 0 else None
    return None


# --------------------------------------------------------------------------- prepare


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """The model a plan addresses, plus what building any plan needs (computed once)."""

    model: Model
    source_sha256: str
    calib_feeds: list[dict[str, np.ndarray]] = field(repr=False)
    stats: dict[str, TensorStats] | None = field(default=None, repr=False)
    workdir: Path | None = None
    cache: dict[Any, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    """Input Hessians and GPTQ weights, computed once per layer for every plan built from this."""

    def layers(self) -> list[QuantLayer]:
        return find_layers(self.model)

    def input_hessians(self, layers: Sequence[QuantLayer]) -> dict[str, np.ndarray]:
        """``X^T X`` of each layer's float input over the calibration samples (cached)."""
        from edgetune.transforms.gptq import input_hessians

        missing = {lay.name: lay.activation for lay in layers if ("hessian", lay.name) not in self.cache}
        if missing:
            for name, h in input_hessians(self.model, missing, self.calib_feeds).items():
                self.cache[("hessian", name)] = h
        return {lay.name: self.cache[("hessian", lay.name)] for lay in layers}


def model_sha256(model: Model) -> str:
    return hashlib.sha256(model.to_bytes()).hexdigest()


def prepare(
    model: Model | str | Path,
    *,
    data: BoundData | Dataset | str | Path | Mapping[str, np.ndarray] | None,
    preprocess: bool = True,
    calib_limit: int | None = 512,
    with_stats: bool = True,
    workdir: Path | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Prepared:
    """Pre-process ``model``, name every node, and collect activation statistics once."""
    from edgetune.transforms.ort_backend import preprocess as ort_preprocess

    source = load(model)
    with tempfile.TemporaryDirectory(prefix="edgetune-plan-") as tmp:
        prepped = ort_preprocess(source, Path(tmp)) if preprocess else source
    named = _named(prepped)
    feeds = _calib_feeds(data, source, calib_limit)
    stats = None
    if with_stats and feeds:
        stats = collect_tensor_stats(named, needed_tensors(named), feeds, progress=progress)
    return Prepared(model=named, source_sha256=model_sha256(source), calib_feeds=feeds,
                    stats=stats, workdir=workdir)


def needed_tensors(model: Model) -> list[str]:
    """The tensors a static plan can quantize: every layer's input and output, and those of
    the data-movement operators between layers (see ``ort_plan.GLUE_OPS``)."""
    from edgetune.transforms.ort_plan import GLUE_OPS

    inits = {i.name for i in model.proto.graph.initializer}
    names = [t for layer in find_layers(model) for t in (layer.activation, layer.output)]
    for node in model.proto.graph.node:
        if node.op_type in GLUE_OPS:
            names += [t for t in [*node.input, *node.output] if t and t not in inits]
    return list(dict.fromkeys(names))


def collect_tensor_stats(model: Model, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]],
                         *, progress: Progress = NULL_PROGRESS) -> dict[str, TensorStats]:
    """Min/max, then histograms, of the float tensors ``names`` (as ``calibrate.collect_stats``
    does for every tensor; a large model has many more tensors than a plan can quantize)."""
    session, index = intermediate_session(model, names)
    stats = {n: TensorStats(name=n) for n in names}
    for update in (TensorStats.update_range, TensorStats.update_hist):
        progress.start("calibrating", len(feeds))
        for feed in feeds:
            outputs = session.run(feed)
            for name, st in stats.items():
                array = np.asarray(outputs[index[name]])
                if array.dtype.kind == "f":
                    update(st, array)
            progress.advance()
        progress.finish()
    return {n: st for n, st in stats.items() if st.count or st.lo <= st.hi}


def _calib_feeds(data: Any, model: Model, limit: int | None) -> list[dict[str, np.ndarray]]:
    if data is None:
        return []
    bound = data if isinstance(data, BoundData) else bind(data, model)
    feeds = list(bound.feeds(limit=limit))
    if not feeds:
        raise DataError("the calibration dataset is empty; give at least one sample")
    return feeds


def _named(model: Model) -> Model:
    """Give every node a unique name (plans address layers by node name) and drop node
    metadata and doc strings: exporters fill them with source locations that take no part in
    inference and can be a large share of a small model's file."""
    proto = model.copy_proto()
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
        node.ClearField("metadata_props")
        node.doc_string = ""
    return model.with_proto(proto)


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True, kw_only=True)
class PlanResult:
    """The built model, what each layer actually became, and anything that did not apply."""

    model: Model
    plan: Plan
    applied: dict[str, str]
    """Layer -> precision found in the built graph."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "applied": dict(self.applied),
                "warnings": list(self.warnings), "size_bytes": self.model.size_bytes}


def apply_plan(
    model: Model | str | Path,
    plan: Plan,
    *,
    data: BoundData | Dataset | str | Path | Mapping[str, np.ndarray] | None = None,
    prepared: Prepared | None = None,
    progress: Progress = NULL_PROGRESS,
) -> PlanResult:
    """Build the mixed-precision model ``plan`` describes.

    ``data`` is the calibration set (needed when the plan has int8 or a16 layers); pass
    ``prepared`` (from :func:`prepare`) to build many plans of one model without repeating the
    pre-processing and the statistics.
    """
    from edgetune.transforms import ort_plan

    source = load(model)
    if prepared is None:
        needs_stats = any(c.precision in (Precision.INT8, Precision.A16) for c in _choices(plan))
        needs_data = needs_stats or any(c.gptq for c in _choices(plan))
        if needs_data and data is None:
            raise DataError(
                "the plan has int8, a16 or GPTQ int4 layers, which need calibration data; pass "
                "data= (or --calib)"
            )
        prepared = prepare(source, data=data if needs_data else None, preprocess=plan.preprocess,
                           calib_limit=plan.calib_limit, with_stats=needs_stats, progress=progress)
    if plan.model_sha256 and plan.model_sha256 != prepared.source_sha256:
        log.warning("the plan was made for another version of %s (fingerprint differs)", plan.model_name)
    layers = {layer.name: layer for layer in prepared.layers()}
    choices = _resolve(plan, layers)
    built = ort_plan.build(prepared, layers, choices, plan.percentile)
    name = f"{source.name}_mixed"
    return PlanResult(model=source.with_proto(built.model.proto, name=name), plan=plan,
                      applied=built.applied, warnings=built.warnings)


def _choices(plan: Plan) -> Iterable[LayerChoice]:
    yield plan.default
    yield from plan.layers.values()


def _resolve(plan: Plan, layers: Mapping[str, QuantLayer]) -> dict[str, LayerChoice]:
    """Every layer's choice; unknown names and unsupported combinations are errors."""
    unknown = sorted(set(plan.layers) - set(layers))
    if unknown:
        known = ", ".join(list(layers)[:6])
        raise ConfigError(
            f"the plan names layer(s) {unknown[:5]} that the model does not have (known: {known}, "
            "...); make the plan for this model, with the same 'preprocess' setting"
        )
    out = {}
    for name, layer in layers.items():
        choice = plan.choice(name)
        if not layer.supports(choice.precision):
            if name in plan.layers:
                raise ConfigError(
                    f"layer {name!r} is a {layer.op_type}, which cannot be {choice.precision.value}; "
                    f"choose one of {[p.value for p in Precision if layer.supports(p)]}"
                )
            choice = FP32  # a default that does not fit this operator leaves it alone
        if choice.gptq and layer.op_type != "MatMul":
            raise ConfigError(f"layer {name!r} is a {layer.op_type}; GPTQ rounding applies to MatMul "
                              "layers only: remove 'gptq' from its choice")
        out[name] = choice
    return out


def uniform_plan(model_name: str, layers: Iterable[QuantLayer], choice: LayerChoice, **kwargs: Any) -> Plan:
    """A plan giving ``choice`` to every layer that supports it (the others stay float)."""
    chosen = {layer.name: choice for layer in layers if layer.supports(choice.precision)}
    return Plan(layers=chosen, model_name=model_name, **kwargs)


def choice_fields() -> list[str]:
    return [f.name for f in fields(LayerChoice)]
