"""LiteRT (TensorFlow Lite) with the XNNPACK delegate, on a model converted from ONNX by onnx2tf.

Two rows in the runtime table:

* ``litert``: float32 conversion. An ONNX model with QuantizeLinear/DequantizeLinear pairs is
  converted to float32 too (onnx2tf folds them), and the session says so in ``notes``.
* ``litert-int8``: onnx2tf's own post-training INT8 quantization of a float32 ONNX model, with
  ``calibration=`` data (an .npz path, ``pkg.mod:fn`` or arrays); float inputs and outputs, INT8
  inside, XNNPACK's QS8 kernels.

Conversion is ahead of time (see :mod:`edgetune.runtimes.litert_convert`): sessions report it in
``offline_phases_ms``, apart from the cold-start phases. Placement: XNNPACK replaces the
operators it supports by DELEGATE nodes; every operator outside them ran on TFLite's built-in
CPU kernels, a real fallback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import ConfigError, MissingExtraError, RuntimeBackendError
from edgetune.runtimes.base import OpPlacement, PlacementStatus, SessionOptions
from edgetune.runtimes.litert_convert import (
    Conversion,
    convert,
    converter_version,
    to_converted_layout,
)

__all__ = ["LiteRT", "LiteRTInt8", "LiteRTSession"]

DELEGATE = "XNNPACK"
BUILTIN = "TFLite CPU kernels"
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_CALIBRATION_SAMPLES = 100


def _litert() -> Any:
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise MissingExtraError("ai-edge-litert", "litert", "the LiteRT runtime") from None
    return interpreter


class LiteRTSession:
    """One interpreter; feeds move to onnx2tf's layout (NCHW -> NHWC) where it changed it."""

    def __init__(
        self,
        interpreter: Any,
        model: Model,
        conversion: Conversion,
        load_phases_ms: dict[str, float],
        notes: list[str],
    ) -> None:
        self._it = interpreter
        self._model_name = model.name
        runner = interpreter.get_signature_runner()
        ins, outs = runner.get_input_details(), runner.get_output_details()
        self._inputs = {
            k: (d["index"], np.dtype(d["dtype"]), _permuted(d["shape"], conversion.shapes.get(k)))
            for k, d in ins.items()
        }
        self.output_names = [o.name for o in model.outputs if o.name in outs] or list(outs)
        want = {o.name: o.shape for o in model.outputs}
        self._outputs = [
            (outs[k]["index"], _permuted(outs[k]["shape"], want.get(k))) for k in self.output_names
        ]
        self.load_phases_ms = load_phases_ms
        self.offline_phases_ms: dict[str, float] = {}
        self.conversion = conversion
        self.notes = notes

    @property
    def interpreter(self) -> Any:
        return self._it

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            for name, (index, dtype, permute) in self._inputs.items():
                self._set(index, feed[name], dtype, permute)
            self._it.invoke()
        except KeyError as exc:
            raise RuntimeBackendError(
                f"LiteRT model {self._model_name!r} needs input {exc}; give {sorted(self._inputs)}"
            ) from None
        except (RuntimeError, ValueError) as exc:
            raise RuntimeBackendError(
                f"LiteRT failed to run {self._model_name!r}: {exc}; check "
                "the inputs match the shapes it was converted for"
            ) from None
        return [self._get(index, permute) for index, permute in self._outputs]

    def _set(self, index: int, array: np.ndarray, dtype: np.dtype, permute: bool) -> None:
        value = np.asarray(array)
        value = (to_converted_layout(value) if permute else value).astype(dtype, copy=False)
        if tuple(self._it.get_tensor(index).shape) != value.shape:
            self._it.resize_tensor_input(index, list(value.shape))
            self._it.allocate_tensors()
        self._it.set_tensor(index, value)

    def _get(self, index: int, permute: bool) -> np.ndarray:
        value = self._it.get_tensor(index)
        if permute:
            return np.ascontiguousarray(value.transpose(np.argsort(_nhwc(value.ndim))))
        return value


def _nhwc(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def _permuted(converted: Any, onnx_shape: Any) -> bool:
    """True when onnx2tf moved channels last: the converted shape is the NHWC form of the ONNX
    one (symbolic ONNX dimensions match anything; when both forms match, as for [1,3,3,3],
    onnx2tf's rule applies: rank 3-5 tensors go channels-last)."""
    got = tuple(int(d) for d in converted)
    if onnx_shape is None or len(got) not in (3, 4, 5) or len(onnx_shape) != len(got):
        return False
    want = [d if isinstance(d, int) and d > 0 else None for d in onnx_shape]
    moved = [want[i] for i in _nhwc(len(got))]
    return all(w is None or w == g for w, g in zip(moved, got, strict=True))


class LiteRT:
    """LiteRT with XNNPACK on the float32 conversion of the ONNX model."""

    name = "litert"
    library = "ai_edge_litert.interpreter"
    """The Python module a fresh process imports to use this runtime."""

    def version(self) -> str:
        from importlib import metadata

        _litert()
        return f"ai-edge-litert {metadata.version('ai-edge-litert')} ({converter_version()})"

    def settings(self) -> dict[str, Any]:
        return {}

    def check(self) -> None:
        _litert()
        converter_version()

    def session(self, model: Model, options: SessionOptions | None = None) -> LiteRTSession:
        options = options or SessionOptions()
        shapes = static_shapes(model, options)
        start = time.perf_counter()
        conversion = convert(model.to_bytes(), shapes, calibration=self._calibration(model))
        offline = {
            "convert_cached" if conversion.cached else "convert": (time.perf_counter() - start)
            * 1e3
        }
        session = self._open(model, conversion, options, self._notes(model))
        session.offline_phases_ms = offline
        return session

    def _calibration(self, model: Model) -> dict[str, np.ndarray] | None:
        return None

    def _notes(self, model: Model) -> list[str]:
        if _QDQ_OPS & set(model.op_types()):
            return [
                f"{model.name}: onnx2tf folds QuantizeLinear/DequantizeLinear, so LiteRT runs "
                "this model in float32, not INT8; benchmark litert-int8 on the float32 model"
            ]
        return []

    def _open(
        self, model: Model, conversion: Conversion, options: SessionOptions, notes: list[str]
    ) -> LiteRTSession:
        interpreter_mod = _litert()
        threads = options.threads or len(os.sched_getaffinity(0))
        start = time.perf_counter()
        try:
            it = interpreter_mod.Interpreter(model_path=str(conversion.path), num_threads=threads)
            created = time.perf_counter()
            it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise RuntimeBackendError(
                f"LiteRT cannot load the conversion of {model.name!r}: {exc}; "
                f"delete {conversion.path} to convert again"
            ) from None
        phases = {
            "load_interpreter": (created - start) * 1e3,
            "allocate_tensors": (time.perf_counter() - created) * 1e3,
        }
        return LiteRTSession(it, model, conversion, phases, notes)

    def placement(
        self, model: Model, options: SessionOptions, feed: Mapping[str, np.ndarray]
    ) -> list[OpPlacement]:
        """Operators inside an XNNPACK partition ran on XNNPACK; the rest fell back."""
        session = self.session(model, options)
        session.run(feed)
        return delegate_placement(session.interpreter._get_ops_details())


class LiteRTInt8(LiteRT):
    """onnx2tf's INT8 post-training quantization, calibrated on the ``calibration`` data."""

    name = "litert-int8"

    def __init__(self, *, calibration: str | Path | Mapping[str, np.ndarray] | None = None) -> None:
        self.calibration = calibration

    def settings(self) -> dict[str, Any]:
        if self.calibration is None or isinstance(self.calibration, (str, Path)):
            return {"calibration": None if self.calibration is None else str(self.calibration)}
        return {"calibration": None, "_unserializable": True}

    def check(self) -> None:
        super().check()
        if self.calibration is None:
            raise _needs_calibration()

    def _calibration(self, model: Model) -> dict[str, np.ndarray]:
        if self.calibration is None:
            raise _needs_calibration()
        if _QDQ_OPS & set(model.op_types()):
            raise RuntimeBackendError(
                f"litert-int8 quantizes a float32 model itself, but {model.name!r} is already "
                "QDQ INT8; give it the float32 model"
            )
        from edgetune.core.data import bind

        arrays = bind(self.calibration, model).materialize(limit=_CALIBRATION_SAMPLES)
        return {k: v for k, v in arrays.items() if k in {i.name for i in model.inputs}}

    def _notes(self, model: Model) -> list[str]:
        return []


def _needs_calibration() -> ConfigError:
    return ConfigError(
        "litert-int8 quantizes while converting and needs calibration inputs; pass --calib "
        "DATA.npz (or calibration=... in Python), about 100 representative samples"
    )


def static_shapes(model: Model, options: SessionOptions) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: the ones given, else the model's with a symbolic batch set to 1."""
    given = dict(options.input_shapes or {})
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in model.inputs:
        if spec.name in given:
            shapes[spec.name] = tuple(int(d) for d in given[spec.name])
            continue
        dims = list(spec.shape or ())
        fixed = [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 else None)
            for i, d in enumerate(dims)
        ]
        if spec.shape is None or any(d is None for d in fixed):
            raise ConfigError(
                f"LiteRT compiles for static shapes and input {spec.describe()} has symbolic "
                "dimensions; pass SessionOptions(input_shapes={...}) (edgetune bench does this "
                "from the benchmark inputs)"
            )
        shapes[spec.name] = tuple(int(d) for d in fixed if d is not None)
    return shapes


def delegate_placement(ops: list[dict[str, Any]]) -> list[OpPlacement]:
    """Map every original operator to XNNPACK (inside a DELEGATE partition) or the builtin CPU
    kernels, walking back from each DELEGATE node's outputs to its inputs."""
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op["index"] for op in originals for t in op["outputs"]}
    by_index = {op["index"]: op for op in originals}
    delegated: set[int] = set()
    for node in (op for op in ops if op["op_name"] == "DELEGATE"):
        delegated |= _partition(node, producer, by_index)
    return [
        OpPlacement(
            node=f"{op['op_name'].lower()}_{op['index']}",
            op_type=op["op_name"],
            device=DELEGATE if op["index"] in delegated else BUILTIN,
            status=PlacementStatus.TARGET if op["index"] in delegated else PlacementStatus.FALLBACK,
            precision=_dtype_name(op),
        )
        for op in originals
    ]


def _partition(
    node: dict[str, Any], producer: dict[int, int], by_index: dict[int, Any]
) -> set[int]:
    boundary = {int(t) for t in node["inputs"]}
    stack, found = [int(t) for t in node["outputs"]], set()
    while stack:
        tensor = stack.pop()
        op_index = producer.get(tensor)
        if tensor in boundary or op_index is None or op_index in found:
            continue
        found.add(op_index)
        stack.extend(int(t) for t in by_index[op_index]["inputs"] if int(t) >= 0)
    return found


def _dtype_name(op: dict[str, Any]) -> str | None:
    types = op.get("operand_types") or []
    return np.dtype(types[0]).name if types else None
