"""OpenVINO with its CPU plugin, reading the ONNX model directly (no conversion step on disk).

Session creation has two phases, reported apart: ``read_model`` (ONNX frontend -> OpenVINO
graph) and ``compile`` (the CPU plugin's graph transformations and kernel selection). Placement
comes from the compiled model's runtime graph: each executed layer, the original ONNX nodes it
fused, and the precision it really ran in, which shows when an INT8 model's layers ran in f32.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import MissingExtraError, RuntimeBackendError
from edgetune.runtimes.base import OpPlacement, PlacementStatus, SessionOptions

__all__ = ["OpenVinoCPU", "OpenVinoSession"]

DEVICE = "CPU"
_NOT_EXECUTED = {"Const", "Input", "Output", "Parameter", "Result"}


def _ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise MissingExtraError("openvino", "openvino", "the OpenVINO runtime") from None
    return openvino


class OpenVinoSession:
    def __init__(self, compiled: Any, model: Model, load_phases_ms: dict[str, float]) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._model_name = model.name
        self._outputs = list(compiled.outputs)
        self.output_names = [o.get_any_name() for o in self._outputs]
        self.load_phases_ms = load_phases_ms
        self.inference_precision = _precision(compiled)
        self.notes = _precision_notes(self.inference_precision, model)

    @property
    def compiled(self) -> Any:
        return self._compiled

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            results = self._request.infer(dict(feed), share_inputs=True)
        except Exception as exc:  # OpenVINO raises RuntimeError with long C++ traces
            message = (
                str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            )
            raise RuntimeBackendError(
                f"OpenVINO failed to run {self._model_name!r}: {message}; check the inputs match "
                "the model"
            ) from None
        return [np.asarray(results[o]) for o in self._outputs]


class OpenVinoCPU:
    """OpenVINO on CPU with the latency performance hint (one stream).

    ``precision``: the CPU plugin's inference precision. None keeps OpenVINO's default, which is
    bf16 on CPUs with AVX512-BF16 or AMX (what an app shipping OpenVINO gets, and the session
    notes say so); ``"f32"`` forces float32, for exact comparisons.
    """

    name = "openvino"
    library = "openvino"
    """The Python module a fresh process imports to use this runtime."""

    def __init__(self, *, precision: str | None = None) -> None:
        self.precision = precision

    def version(self) -> str:
        return str(_ov().__version__)

    def settings(self) -> dict[str, Any]:
        return {} if self.precision is None else {"precision": self.precision}

    def check(self) -> None:
        core = _ov().Core()
        if DEVICE not in core.available_devices:
            raise RuntimeBackendError(
                f"OpenVINO sees no CPU device (devices: {core.available_devices}); "
                "reinstall openvino"
            )

    def session(self, model: Model, options: SessionOptions | None = None) -> OpenVinoSession:
        options = options or SessionOptions()
        core = _ov().Core()
        start = time.perf_counter()
        graph = self._read(core, model)
        read_done = time.perf_counter()
        compiled = self._compile(core, graph, model, options)
        phases = {
            "read_model": (read_done - start) * 1e3,
            "compile": (time.perf_counter() - read_done) * 1e3,
        }
        return OpenVinoSession(compiled, model, phases)

    def _read(self, core: Any, model: Model) -> Any:
        try:
            return core.read_model(model.to_bytes(), b"")
        except Exception as exc:  # frontend errors: unsupported op, bad opset
            raise RuntimeBackendError(
                f"OpenVINO cannot read {model.name!r}: {_first_line(exc)}; check the operators are "
                f"supported by OpenVINO {self.version()}'s ONNX frontend"
            ) from None

    def _compile(self, core: Any, graph: Any, model: Model, options: SessionOptions) -> Any:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if self.precision is not None:
            config["INFERENCE_PRECISION_HINT"] = self.precision
        try:
            return core.compile_model(graph, DEVICE, config)
        except Exception as exc:  # plugin errors
            raise RuntimeBackendError(
                f"OpenVINO cannot compile {model.name!r} for {DEVICE}: {_first_line(exc)}"
            ) from None

    def placement(
        self, model: Model, options: SessionOptions, feed: Mapping[str, np.ndarray]
    ) -> list[OpPlacement]:
        """Executed layers of the compiled CPU graph (constants and I/O left out)."""
        session = self.session(model, options)
        session.run(feed)
        ops = session.compiled.get_runtime_model().get_ordered_ops()
        return [p for p in (_layer(op) for op in ops) if p is not None]


def _precision(compiled: Any) -> str:
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except Exception:  # older plugins do not expose the property
        return "unknown"
    return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)


def _precision_notes(precision: str, model: Model) -> list[str]:
    if "float32" in precision or "f32" in precision or precision == "unknown":
        return []
    return [
        f"OpenVINO ran {model.name} with inference precision {precision} (its CPU default where "
        "the CPU has BF16/AMX units), so outputs differ slightly from float32; set "
        "--openvino-precision f32 to compare exactly"
    ]


def _layer(op: Any) -> OpPlacement | None:
    info = op.get_rt_info()
    layer_type = _rt(info, "layerType")
    if layer_type in _NOT_EXECUTED:
        return None
    return OpPlacement(
        node=op.get_friendly_name(),
        op_type=layer_type,
        device=DEVICE,
        status=PlacementStatus.TARGET,
        precision=_rt(info, "runtimePrecision"),
    )


def _rt(info: Any, key: str) -> str:
    return str(info[key].astype(str)) if key in info else "?"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
