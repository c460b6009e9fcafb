"""ONNX Runtime on CPU: the baseline runtime."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import MissingExtraError, RuntimeBackendError
from edgetune.runtimes.base import SessionOptions

__all__ = ["OnnxRuntimeCPU"]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnxruntime", "the ONNX Runtime backend") from None
    return onnxruntime


class OrtSession:
    """An ``InferenceSession`` behind the :class:`~edgetune.runtimes.base.Session` protocol."""

    def __init__(self, session: Any, model_name: str) -> None:
        self._session = session
        self._model_name = model_name
        self.output_names = [o.name for o in session.get_outputs()]

    @property
    def raw(self) -> Any:
        return self._session

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self._session.run(None, dict(feed)))
        except Exception as exc:  # ORT raises its own Fail/InvalidArgument types
            message = str(exc).strip().splitlines()[0][:300]
            raise RuntimeBackendError(
                f"ONNX Runtime failed to run {self._model_name!r}: {message}; check the inputs "
                "match the model"
            ) from None


class OnnxRuntimeCPU:
    """ONNX Runtime with the CPU execution provider."""

    name = "onnxruntime"

    def version(self) -> str:
        return str(_ort().__version__)

    def session_options(self, options: SessionOptions) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        level = ort.GraphOptimizationLevel
        so.graph_optimization_level = level.ORT_ENABLE_ALL if options.optimize else level.ORT_DISABLE_ALL
        return so

    def session(self, model: Model, options: SessionOptions | None = None) -> OrtSession:
        ort = _ort()
        so = self.session_options(options or SessionOptions())
        try:
            raw = ort.InferenceSession(model.to_bytes(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises Fail, InvalidGraph, NotImplemented...
            message = str(exc).strip().splitlines()[0][:300]
            raise RuntimeBackendError(
                f"ONNX Runtime cannot load {model.name!r}: {message}; check the model's opset "
                "and operators are supported by onnxruntime " + str(ort.__version__)
            ) from None
        return OrtSession(raw, model.name)
