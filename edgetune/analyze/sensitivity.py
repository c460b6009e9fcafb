"""Per-layer sensitivity: how much each layer's quantization disturbs the model, three ways.

1. **Local proxies** (no model build): the layer's weight error and the SQNR of its output when
   its weights and input are rounded exactly as the built model would round them
   (:func:`edgetune.transforms.ort_plan.weight_qdq`), computed in numpy on float activations
   recorded from real calibration samples.
2. **End-to-end output noise** (one run per probe): the float model gets an ``Add`` after every
   layer; feeding the layer's exact quantization error there (zero elsewhere) measures how the
   rest of the network amplifies it. The ratio of output noise to the layer's own noise is a
   Gauss-Newton (Fisher) estimate of the layer's sensitivity, ``tr(J^T J)`` per unit of noise;
   it predicts the output noise of settings that were not probed. For classifiers, the KL
   divergence of the output distribution is reported too (second order in the error, scaled by
   the Fisher information).
3. **Measured metric change**: for the layers that matter, a real model with only that layer
   quantized (built by :func:`~edgetune.transforms.plan.apply_plan`) is evaluated on held-out
   data with the task metric.

Output noise is additive across layers to first order (independent rounding errors), which is
what lets the mixed-precision search treat a plan's noise as the sum of its layers' noise.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import DataError
from edgetune.runtimes import get_runtime
from edgetune.transforms.calibrate import intermediate_session
from edgetune.transforms.plan import LayerChoice, Precision, QuantLayer
from edgetune.transforms.rounding import act_qdq, output_qdq, weight_qdq

__all__ = [
    "ChoiceSensitivity",
    "LayerRecord",
    "NoiseProbe",
    "batch_feeds",
    "im2col",
    "layer_forward",
    "local_noise",
    "record_layers",
    "relative_error",
    "spearman",
]

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True, kw_only=True)
class LayerRecord:
    """A layer's float input, output and weights on the probe samples (batch axis first)."""

    layer: QuantLayer
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    w: np.ndarray = field(repr=False)
    bias: np.ndarray | None = field(default=None, repr=False)
    samples: int = 1
    forward_ok: bool = True
    """Whether the numpy forward reproduces the runtime's output (else no local proxy)."""
    hessian: np.ndarray | None = field(default=None, repr=False)
    """``X^T X`` of the layer's input over calibration data other than the probe samples (for
    GPTQ choices, whose noise is then measured out of sample)."""

    @property
    def macs_per_sample(self) -> int:
        op, shape = self.layer.op_type, self.layer.weight_shape
        if op == "Conv":
            return int(np.prod(self.y.shape[1:])) * int(np.prod(shape[1:]))
        if op in ("MatMul", "Gemm"):
            rows = int(np.prod(self.x.shape[:-1])) // max(self.samples, 1)
            return rows * int(np.prod(shape))
        return 0

    @property
    def output_elements_per_sample(self) -> int:
        return int(self.y.size) // max(self.samples, 1)


def batch_feeds(feeds: Sequence[Feed], model: Model) -> list[Feed]:
    """One feed holding every sample when the model takes a free batch axis, else the feeds."""
    free = all(spec.shape is not None and spec.shape and not isinstance(spec.shape[0], int)
               for spec in model.inputs)
    single = all(v.ndim > 0 and v.shape[0] == 1 for f in feeds for v in f.values())
    if not (free and single and feeds):
        return list(feeds)
    return [{name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}]


def record_layers(model: Model, layers: Sequence[QuantLayer], feeds: Sequence[Feed]) -> dict[str, LayerRecord]:
    """Float inputs and outputs of every layer on ``feeds`` (one runtime pass)."""
    from onnx import numpy_helper

    wanted = list(dict.fromkeys(t for layer in layers for t in (layer.activation, layer.output)))
    session, index = intermediate_session(model, wanted)
    runs = [session.run(feed) for feed in feeds]
    tensors = {n: np.concatenate([np.asarray(r[index[n]]) for r in runs]) for n in wanted}
    inits = {i.name: numpy_helper.to_array(i) for i in model.proto.graph.initializer}
    samples = sum(_feed_samples(f) for f in feeds)
    return {layer.name: _record(layer, tensors, inits, samples, model.proto) for layer in layers}


def _feed_samples(feed: Feed) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def _record(layer: QuantLayer, tensors: Mapping[str, np.ndarray], inits: Mapping[str, np.ndarray],
            samples: int, proto: Any) -> LayerRecord:
    node = next(n for n in proto.graph.node if n.name == layer.name)
    bias = inits.get(node.input[2]) if layer.op_type in ("Conv", "Gemm") and len(node.input) > 2 else None
    x, y = tensors[layer.activation], tensors[layer.output]
    w = np.asarray(inits[layer.weight], dtype=np.float32)
    ok = _forward_matches(layer, x, w, bias, y)
    return LayerRecord(layer=layer, x=x, y=y, w=w, bias=bias, samples=samples, forward_ok=ok)


def _forward_matches(layer: QuantLayer, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                     y: np.ndarray) -> bool:
    try:
        got = layer_forward(layer, x, w, bias)
    except (ValueError, NotImplementedError) as exc:
        log.info("no local proxy for %s: %s", layer.name, exc)
        return False
    err = float(np.sum((got - y) ** 2)) / max(float(np.sum(y**2)), 1e-30)
    if got.shape != y.shape or err > 1e-5:
        log.info("no local proxy for %s: numpy forward differs (relative error %.2g)", layer.name, err)
        return False
    return True


# --------------------------------------------------------------------------- numpy layers


def im2col(x: np.ndarray, kernel: tuple[int, int], attrs: Mapping[str, Any]) -> np.ndarray:
    """Sliding windows of an NCHW input as [N, Ho, Wo, C, kh, kw]."""
    if str(attrs.get("auto_pad", "NOTSET")).replace("b'", "").strip("'") not in ("NOTSET", ""):
        raise NotImplementedError("auto_pad convolutions")
    if x.ndim != 4:
        raise NotImplementedError(f"{x.ndim - 2}-D convolutions")
    kh, kw = kernel
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5))


def layer_forward(layer: QuantLayer, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The layer in numpy (float32, like the runtime), for error predictions."""
    op = layer.op_type
    if op == "Conv":
        return _conv(x, w, bias, layer.attrs)
    if op == "Gemm":
        a = x.T if layer.attrs.get("transA", 0) else x
        b = w.T if layer.attrs.get("transB", 0) else w
        y = float(layer.attrs.get("alpha", 1.0)) * (a @ b)
        if bias is not None:
            y = y + float(layer.attrs.get("beta", 1.0)) * bias
        return y.astype(np.float32)
    if op == "MatMul":
        return (x @ w).astype(np.float32)
    if op == "Gather":
        return w[x.astype(np.int64)]
    raise NotImplementedError(op)


def _conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, attrs: Mapping[str, Any]) -> np.ndarray:
    group = int(attrs.get("group", 1))
    cout, cg, kh, kw = w.shape
    cols = im2col(x, (kh, kw), attrs)  # [N, Ho, Wo, C, kh, kw]
    n, ho, wo = cols.shape[:3]
    cols = cols.reshape(n, ho, wo, group, cg, kh, kw)
    wg = w.reshape(group, cout // group, cg, kh, kw)
    y = np.einsum("nhwgcij,gocij->nhwgo", cols, wg, optimize=True).reshape(n, ho, wo, cout)
    if bias is not None:
        y = y + bias
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)).astype(np.float32)


# --------------------------------------------------------------------------- local proxies


@dataclass(frozen=True, kw_only=True)
class ChoiceSensitivity:
    """How one choice for one layer disturbs the layer and the model."""

    choice: LayerChoice
    weight_error: float
    """Relative squared error of the weights, ||W_q - W||^2 / ||W||^2."""
    layer_noise: float
    """Relative squared error of the layer's output on the probe samples."""
    output_noise: float
    """Relative squared error of the model's output (measured, or predicted from the gain)."""
    measured: bool = False
    kl: float | None = None
    metric_drop: float | None = None
    """Measured drop of the task metric with only this layer quantized (when measured)."""
    flip_rate: float | None = None
    """Measured fraction of top-1 predictions that changed (classifiers, when measured)."""

    @property
    def layer_sqnr_db(self) -> float:
        return _db(self.layer_noise)

    @property
    def output_sqnr_db(self) -> float:
        return _db(self.output_noise)

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice.to_dict(), "label": self.choice.label(),
            "weight_error": self.weight_error, "layer_sqnr_db": self.layer_sqnr_db,
            "output_noise": self.output_noise, "output_sqnr_db": self.output_sqnr_db,
            "output_noise_measured": self.measured, "kl": self.kl, "metric_drop": self.metric_drop, "flip_rate": self.flip_rate,
        }


def _db(noise: float) -> float:
    return math.inf if noise <= 0 else -10.0 * math.log10(noise)


def local_noise(record: LayerRecord, choice: LayerChoice, ranges: Mapping[str, tuple[float, float]],
                cache: dict[Any, np.ndarray] | None = None) -> tuple[float, float, np.ndarray | None]:
    """(weight error, layer output noise, output error tensor) of ``choice`` on ``record``.

    ``ranges`` are the calibration ranges of the choice's method: static layers round their
    input and re-quantize their output with them.

    ``cache`` keeps rounded weights and activations shared by several choices (the
    calibration method only changes the activations, the weight settings only the weights).
    """
    layer = record.layer
    cache = {} if cache is None else cache
    w = record.w
    if not choice.is_quantized:
        return 0.0, 0.0, np.zeros_like(record.y)
    if layer.op_type == "Gather":
        ids = np.unique(record.x.astype(np.int64))
        if choice.precision is Precision.INT8_DYNAMIC:  # one range for the whole table
            wq = weight_qdq(w, layer, choice)[ids]
        else:  # blocks run along rows: only the rows used matter
            wq = weight_qdq(w[ids], layer, choice)
        full = w.copy()
        full[ids] = wq
        delta = full[record.x.astype(np.int64)] - record.y
        return relative_error(wq - w[ids], w[ids]), relative_error(delta, record.y), delta
    wkey = ("w", choice.precision, choice.weights, choice.per_channel, choice.reduce_range,
            choice.block_size, choice.symmetric, choice.gptq)
    if wkey not in cache:
        cache[wkey] = weight_qdq(w, layer, choice, record.hessian)
    wq = cache[wkey]
    werr = relative_error(wq - w, w)
    if not record.forward_ok:
        return werr, werr, None
    y = _float_output(record, cache) + _weight_part(record, wkey, wq, cache)
    y = y + _act_part(record, choice, ranges, cache)
    delta = output_qdq(y, choice, ranges.get(layer.output)) - cache["float"]
    return werr, relative_error(delta, record.y), delta


def _float_output(record: LayerRecord, cache: dict[Any, np.ndarray]) -> np.ndarray:
    """numpy's own float output, so that only rounding shows in the error."""
    if "float" not in cache:
        cache["float"] = layer_forward(record.layer, record.x, record.w, record.bias)
    return cache["float"]


def _weight_part(record: LayerRecord, wkey: Any, wq: np.ndarray, cache: dict[Any, np.ndarray]) -> np.ndarray:
    """Output change from the weights' rounding alone: the layer is linear in its weights."""
    key = ("dw", wkey)
    if key not in cache:
        cache[key] = layer_forward(record.layer, record.x, wq - record.w, None)
    return cache[key]


def _act_part(record: LayerRecord, choice: LayerChoice, ranges: Mapping[str, tuple[float, float]],
              cache: dict[Any, Any]) -> np.ndarray | float:
    """Output change from the input's rounding alone (first order: the product of the two
    roundings, far smaller than either, is left out; it keeps one product per variant)."""
    key = ("dx", choice.precision, choice.activations, choice.method, choice.accuracy_level,
           choice.block_size if choice.accuracy_level == 4 else 0)
    if key not in cache:
        xq = act_qdq(record.x, choice, ranges.get(record.layer.activation))
        cache[key] = None if xq is record.x else layer_forward(record.layer, xq - record.x, record.w, None)
    part = cache[key]
    return 0.0 if part is None else part


def relative_error(err: np.ndarray, ref: np.ndarray) -> float:
    """||err||^2 / ||ref||^2, in float64."""
    return float(np.sum(np.square(err, dtype=np.float64))) / max(float(np.sum(np.square(ref, dtype=np.float64))), 1e-30)


# --------------------------------------------------------------------------- end-to-end probe


class NoiseProbe:
    """The float model with an ``Add(output, delta)`` after every layer, run on fixed samples.

    ``output_noise(layer, delta)`` feeds one layer's error and returns the model's relative
    output noise (and KL divergence for 2-D outputs) against the undisturbed run.
    """

    def __init__(self, model: Model, records: Mapping[str, LayerRecord], feeds: Sequence[Feed]) -> None:
        self._records = records
        self._feeds = list(feeds)
        self._session = get_runtime("onnxruntime").session(_with_deltas(model, records))
        self._zeros = {_delta_name(r.layer): np.zeros([1] * r.y.ndim, np.float32) for r in records.values()}
        self._splits = np.cumsum([_feed_samples(f) for f in self._feeds])[:-1]
        started = time.perf_counter()
        self.reference = self._run({})
        self.seconds_per_run = time.perf_counter() - started

    def _run(self, deltas: Mapping[str, np.ndarray]) -> np.ndarray:
        parts = {k: np.split(v, self._splits) for k, v in deltas.items()}
        outs = []
        for i, feed in enumerate(self._feeds):
            extra = {**self._zeros, **{k: v[i] for k, v in parts.items()}}
            outs.append(np.asarray(self._session.run({**feed, **extra})[0], dtype=np.float64))
        return np.concatenate(outs)

    def output_noise(self, layer: str, delta: np.ndarray) -> tuple[float, float | None]:
        record = self._records[layer]
        out = self._run({_delta_name(record.layer): delta.astype(np.float32)})
        noise = relative_error(out - self.reference, self.reference)
        return noise, _kl(self.reference, out) if out.ndim == 2 and out.shape[1] > 1 else None


def _delta_name(layer: QuantLayer) -> str:
    return f"{layer.output}__edgetune_delta"


def _with_deltas(model: Model, records: Mapping[str, LayerRecord]) -> Model:
    from onnx import TensorProto, helper

    proto = model.copy_proto()
    graph = proto.graph
    adds = []
    for record in records.values():
        layer = record.layer
        pre = f"{layer.output}__edgetune_pre"
        node = next(n for n in graph.node if n.name == layer.name)
        node.output[0] = pre
        delta = _delta_name(layer)
        graph.input.append(helper.make_tensor_value_info(delta, TensorProto.FLOAT, [None] * record.y.ndim))
        adds.append((layer.name, helper.make_node("Add", [pre, delta], [layer.output], name=f"{layer.name}__edgetune_probe")))
    for after, add in adds:
        index = next(i for i, n in enumerate(graph.node) if n.name == after)
        graph.node.insert(index + 1, add)
    return model.with_proto(proto, name=f"{model.name}-probe")


def _kl(ref: np.ndarray, out: np.ndarray) -> float:
    def logsoftmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = logsoftmax(ref), logsoftmax(out)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


# --------------------------------------------------------------------------- per layer


@dataclass(frozen=True, kw_only=True)
class LayerProbeResult:
    """Every candidate of one layer, with its gain (output noise per unit of layer noise)."""

    choices: list[ChoiceSensitivity]
    gain: float | None


def probe_layer(record: LayerRecord, candidates: Sequence[LayerChoice],
                ranges: Mapping[Any, Mapping[str, tuple[float, float]]], probe: NoiseProbe | None,
                *, probe_all: bool) -> LayerProbeResult:
    """Local proxies for every candidate; end-to-end noise for every candidate (``probe_all``)
    or for the best candidate of each precision, predicted from the layer's gain elsewhere."""
    local = []
    cache: dict[Any, np.ndarray] = {}
    for choice in candidates:
        local.append((choice, *local_noise(record, choice, ranges.get(choice.method, {}), cache)))
    wanted = set(range(len(local))) if probe_all else _references(local)
    measured: dict[int, tuple[float, float | None]] = {}
    for i in sorted(wanted):
        delta = local[i][3]
        if probe is not None and delta is not None and local[i][0].is_quantized:
            measured[i] = probe.output_noise(record.layer.name, delta)
    gain = _gain([(local[i][2], measured[i][0]) for i in measured])
    out = []
    for i, (choice, werr, lnoise, _) in enumerate(local):
        noise, kl = measured.get(i, ((gain if gain is not None else 1.0) * lnoise, None))
        out.append(ChoiceSensitivity(choice=choice, weight_error=werr, layer_noise=lnoise,
                                     output_noise=noise, measured=i in measured, kl=kl))
    return LayerProbeResult(choices=out, gain=gain)


_FAMILY = {Precision.INT8: "8", Precision.INT8_DYNAMIC: "8", Precision.A16: "8", Precision.INT4: "4"}


def _references(local: Sequence[tuple[LayerChoice, float, float, Any]]) -> set[int]:
    """The least noisy 8-bit and 4-bit candidates: two probes fix the layer's gain."""
    best: dict[str, int] = {}
    for i, (choice, _, noise, _) in enumerate(local):
        family = _FAMILY.get(choice.precision)
        if family is not None and (family not in best or noise < local[best[family]][2]):
            best[family] = i
    return set(best.values())


def _gain(pairs: Iterable[tuple[float, float]]) -> float | None:
    """Geometric mean of output noise / layer noise over the probed choices."""
    logs = [math.log(o / n) for n, o in pairs if n > 0 and o > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


# --------------------------------------------------------------------------- ranking check


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None with fewer than 3 pairs."""
    if len(a) != len(b):
        raise DataError(f"spearman needs two sequences of one length; got {len(a)} and {len(b)}")
    if len(a) < 3:
        return None
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def precision_order() -> list[Precision]:
    return [Precision.INT4, Precision.INT8_DYNAMIC, Precision.INT8, Precision.A16, Precision.FP16,
            Precision.FP32]
