"""What goes into a manifest about the models: files, inputs and outputs, precision, metrics.

Kept apart from packing because it is the only part that opens ONNX files, and so that a
manifest says what the model *is* (read from the graph) rather than what someone typed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgetune.bundle.archive import check_name
from edgetune.bundle.errors import BundleError
from edgetune.bundle.manifest import ENVELOPE_NAME, FileEntry
from edgetune.errors import ConfigError, DataError, ModelError

__all__ = ["collect_files", "describe_model", "metrics_from_report", "min_onnxruntime"]

# The first ONNX Runtime release that runs each default-domain opset
# (https://onnxruntime.ai/docs/reference/compatibility.html).
_ORT_FOR_OPSET = {14: "1.8", 15: "1.10", 16: "1.11", 17: "1.12", 18: "1.14", 19: "1.16",
                  20: "1.17", 21: "1.20", 22: "1.22", 23: "1.23"}
_QUANT_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits",
              "DynamicQuantizeLinear", "QGemm"}
_WEIGHTED_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "MatMulNBits", "QGemm"}
_REPORT_KEYS = ("metric", "baseline", "result", "change", "cascade", "summary")


def collect_files(source: Path) -> list[tuple[str, Path]]:
    """(bundle path, file) for a model file and its external data, or every file of a folder."""
    if source.is_file():
        files = [(source.name, source), *_external_data(source)]
    elif source.is_dir():
        files = [(p.relative_to(source).as_posix(), p) for p in sorted(source.rglob("*"))
                 if not any(part.startswith(".") for part in p.relative_to(source).parts)
                 and not p.is_dir()]
    else:
        raise ConfigError(f"bundle source {str(source)!r} does not exist; give a model file or "
                          "a cascade folder")
    for rel, path in files:
        _check_source(rel, path)
    if not any(rel.endswith(".onnx") for rel, _ in files):
        raise ModelError(f"{str(source)!r} holds no .onnx model; give a model or cascade folder")
    return files


def _check_source(rel: str, path: Path) -> None:
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"{str(path)!r} is a link or not a regular file; bundles hold regular "
                          "files only, copy the target in")
    try:
        check_name(rel)
    except BundleError as exc:
        raise ConfigError(f"file {rel!r} cannot go into a bundle ({exc}); rename it") from None
    if rel == ENVELOPE_NAME:
        raise ConfigError(f"a file may not be called {ENVELOPE_NAME!r}; rename it")


def _external_data(model_path: Path) -> list[tuple[str, Path]]:
    """External-data files a model references, refusing ones outside its folder."""
    proto = _load(model_path)
    from onnx.external_data_helper import uses_external_data

    found: dict[str, Path] = {}
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            entry = {e.key: e.value for e in tensor.external_data}
            location = entry.get("location", "")
            target = (model_path.parent / location).resolve()
            if not target.is_relative_to(model_path.parent.resolve()):
                raise ModelError(f"model {str(model_path)!r} points outside its folder for "
                                 f"external data ({location!r}); move the data beside the model")
            found[location] = target
    return sorted(found.items())


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelError(f"cannot read ONNX model {str(path)!r}: {exc}; give a valid .onnx"
                         ) from None


def file_entry(rel: str, data: bytes) -> FileEntry:
    return FileEntry(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def describe_model(rel: str, path: Path) -> dict[str, Any]:
    """Inputs, outputs, opset and the per-layer precision plan of one ONNX file."""
    from edgetune.core.model import Model

    proto = _load(path)
    model = Model(proto=proto, name=rel)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        "path": rel,
        "inputs": [_spec(s) for s in model.inputs],
        "outputs": [_spec(s) for s in model.outputs],
        "opset": int(opset),
        "precision": precision_plan(proto),
    }


def _spec(spec: Any) -> dict[str, Any]:
    shape = None if spec.shape is None else list(spec.shape)
    return {"name": spec.name, "dtype": str(spec.dtype), "shape": shape}


def precision_plan(proto: Any) -> dict[str, Any]:
    """Weight bytes per element type and the precision each weighted layer runs in."""
    from onnx import helper

    inits = {t.name: t for t in proto.graph.initializer}
    weight_bytes: dict[str, int] = {}
    for tensor in inits.values():
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        weight_bytes[dtype] = weight_bytes.get(dtype, 0) + _tensor_bytes(tensor)
    producers = {out: node for node in proto.graph.node for out in node.output}
    layers = {node.name or node.output[0]: _layer_precision(node, producers, inits)
              for node in proto.graph.node if node.op_type in _WEIGHTED_OPS}
    counts: dict[str, int] = {}
    for precision in layers.values():
        counts[precision] = counts.get(precision, 0) + 1
    return {"weight_bytes": weight_bytes, "layer_counts": counts, "layers": layers}


def _tensor_bytes(tensor: Any) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    from onnx import helper

    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count * int(helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)


def _layer_precision(node: Any, producers: dict[str, Any], inits: dict[str, Any]) -> str:
    if node.op_type in _QUANT_OPS:
        return "int4" if node.op_type == "MatMulNBits" else "int8"
    weight = node.input[1] if len(node.input) > 1 else ""
    source = producers.get(weight)
    if source is not None and source.op_type == "DequantizeLinear":
        tensor = inits.get(source.input[0])
        if tensor is not None:
            from onnx import helper

            return str(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        return "int8"
    tensor = inits.get(weight)
    if tensor is None:
        return "activation"
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(tensor.data_type))


def min_onnxruntime(opset: int) -> str:
    """The oldest ONNX Runtime that can run a model of ``opset``."""
    if opset <= min(_ORT_FOR_OPSET):
        return _ORT_FOR_OPSET[min(_ORT_FOR_OPSET)]
    if opset in _ORT_FOR_OPSET:
        return _ORT_FOR_OPSET[opset]
    import onnxruntime

    return ".".join(onnxruntime.__version__.split(".")[:2])


def metrics_from_report(path: Path | None) -> dict[str, Any]:
    """The metric and latency figures of an edgetune report (any kind), read by allow-list."""
    if path is None:
        return {}
    from edgetune.report.schema import jsonable, load_report

    report = load_report(path)
    metrics = {key: report[key] for key in _REPORT_KEYS if key in report}
    metrics["report_kind"] = report.get("kind")
    metrics["report_created"] = report.get("created")
    return dict(jsonable(metrics))


def load_json_object(path: Path | None, what: str) -> dict[str, Any]:
    """A small JSON object from a file (e.g. a precision plan), or an empty one."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {what} {str(path)!r}: {exc}; give a JSON file") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} {str(path)!r} is not a JSON object; give a JSON object")
    return data
