"""The thin ONNX Runtime part of quantization: pre-processing and writing the INT8 graph.

ONNX Runtime's tooling does this well (QDQ placement, per-channel axes, bias quantization,
pre-processing with BatchNorm folding); edgetune only decides the settings and the ranges.
Its calibration cache (ORT >= 1.31) is how our ranges reach ``quantize_static``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetune.core.model import Model
from edgetune.errors import QuantizationError
from edgetune.transforms.compact import compact_names
from edgetune.transforms.settings import ActType, QuantSettings, WeightType

__all__ = ["build_dynamic", "build_static", "preprocess"]

log = logging.getLogger(__name__)


def _load_proto(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def preprocess(model: Model, workdir: Path) -> Model:
    """ORT's quantization pre-processing; falls back step by step, then to the model as it is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = workdir / "fp32.onnx"
    src.write_bytes(model.to_bytes())
    dst = workdir / "prepped.onnx"
    # transformer exports often need auto_merge for symbolic shape inference to complete
    attempts: list[dict[str, bool]] = [
        {},
        {"auto_merge": True},
        {"skip_symbolic_shape": True},
        {"skip_optimization": True},
    ]
    for options in attempts:
        try:
            with _quiet_ort(), _working_dir(workdir):
                quant_pre_process(str(src), str(dst), **options)
            return model.with_proto(_load_proto(dst))
        except Exception as exc:  # ORT's pre-processing raises many types
            log.info("pre-processing with %s failed: %s", options or "defaults", exc)
    log.warning(
        "ONNX Runtime pre-processing failed on %s; quantizing the model as it is", model.name
    )
    return model


def _qtype(kind: ActType | WeightType) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if kind.value == "u8" else QuantType.QInt8


def build_static(
    model: Model, settings: QuantSettings, ranges: dict[str, tuple[float, float]], workdir: Path
) -> Model:
    """QDQ INT8 with the given activation ranges."""
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    src, dst, cache = _paths(workdir, settings, "static")
    src.write_bytes(model.to_bytes())
    data = TensorsData(
        CalibrationMethod.MinMax,
        {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()},
    )
    save_tensors_data(data, cache)
    _run_ort(
        quantize_static,
        model_input=str(src),
        model_output=str(dst),
        calibration_data_reader=None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(settings.op_types) or None,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=_qtype(settings.activations),
        weight_type=_qtype(settings.weights),
        nodes_to_exclude=list(settings.exclude_nodes),
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=str(cache),
        extra_options={"MatMulConstBOnly": True},
    )
    return _checked_output(model, dst)


def build_dynamic(model: Model, settings: QuantSettings, workdir: Path) -> Model:
    """Dynamic INT8: weights quantized offline, activations per run."""
    from onnxruntime.quantization import quantize_dynamic

    src, dst, _ = _paths(workdir, settings, "dynamic")
    src.write_bytes(model.to_bytes())
    _run_ort(
        quantize_dynamic,
        model_input=str(src),
        model_output=str(dst),
        op_types_to_quantize=list(settings.op_types) or None,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=_qtype(settings.weights),
        nodes_to_exclude=list(settings.exclude_nodes),
        extra_options={"MatMulConstBOnly": True},
    )
    return _checked_output(model, dst)


_QUANT_OPS = {"DequantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}


def _checked_output(model: Model, path: Path) -> Model:
    """The quantized model; an error when ORT quantized nothing (say, no supported operator)."""
    proto = _load_proto(path)
    if not any(node.op_type in _QUANT_OPS for node in proto.graph.node):
        raise QuantizationError(
            "no operator was quantized: the model has none of the operator types asked for"
        )
    return model.with_proto(compact_names(proto))


def _paths(workdir: Path, settings: QuantSettings, kind: str) -> tuple[Path, Path, Path]:
    tag = f"{kind}-{abs(hash(settings)):x}"
    return workdir / f"{tag}-in.onnx", workdir / f"{tag}-out.onnx", workdir / f"{tag}-ranges.json"


def _run_ort(func: Any, **kwargs: Any) -> None:
    try:
        with _quiet_ort():
            func(**kwargs)
    except Exception as exc:  # ORT's quantizer raises ValueError, RuntimeError and others
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"ONNX Runtime could not quantize: {first}") from exc


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Run with ``path`` as the working directory: ORT's symbolic shape inference saves
    ``sym_shape_infer_temp.onnx`` and its external data into the current directory when it
    cannot finish, and would otherwise litter the user's folder."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class _quiet_ort:
    """ORT's quantizer logs advice on the root logger; route it to our debug log instead."""

    def __enter__(self) -> None:
        self._root = logging.getLogger()
        self._level = self._root.level
        self._root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._root.setLevel(self._level)
