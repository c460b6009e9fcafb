"""load: an ONNX file, or a PyTorch module exported to ONNX, becomes a checked :class:`Model`."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgetune.core.model import Model
from edgetune.errors import MissingExtraError, ModelError

__all__ = ["load"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def load(
    source: str | Path | Model | Any,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Model:
    """Load ``source`` as a validated ONNX model with inferred shapes.

    ``source`` is a path to an ``.onnx`` file, an existing :class:`Model`, or a
    ``torch.nn.Module`` (then ``example_inputs`` is required; the batch axis of every input and
    output is exported as dynamic).
    """
    if isinstance(source, Model):
        return source
    if isinstance(source, (str, Path)):
        return _load_file(Path(source))
    if _is_torch_module(source):
        if example_inputs is None:
            raise ModelError(
                "loading a PyTorch module needs example inputs; pass "
                "example_inputs=(torch.randn(1, 3, 224, 224),) shaped like one real input"
            )
        return _load_torch(source, tuple(example_inputs), input_names, output_names, opset)
    raise ModelError(
        f"cannot load a {type(source).__name__}; give a path to an .onnx file or a "
        "torch.nn.Module with example_inputs"
    )


def _load_file(path: Path) -> Model:
    import onnx

    if not path.is_file():
        raise ModelError(f"model file {str(path)!r} does not exist; check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelError(
            f"{str(path)!r} is not a valid ONNX file ({type(exc).__name__}); "
            "export the model to ONNX first (e.g. torch.onnx.export) or check the file is complete"
        ) from None
    _load_external_data(proto, path)
    return _checked(proto, name=path.stem, source=path)


def _load_external_data(proto: Any, path: Path) -> None:
    """Load external tensor data, refusing locations that escape the model's folder."""
    from onnx import external_data_helper

    base = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if base not in target.parents:
            raise ModelError(
                f"tensor {tensor.name!r} points to external data {location!r} outside the "
                f"model's folder {str(base)!r}; refusing to read it (move the data beside the model)"
            )
        if not target.is_file():
            raise ModelError(
                f"tensor {tensor.name!r} needs external data file {location!r}, which is missing "
                f"beside {path.name}; copy it there"
            )
    external_data_helper.load_external_data_for_model(proto, str(base))


def _checked(proto: Any, *, name: str, source: Path | None) -> Model:
    import onnx

    if len(proto.graph.node) == 0:
        raise ModelError(f"model {name!r} has an empty graph; export a model with operators")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
        raise ModelError(
            f"model {name!r} fails the ONNX checker: {first}; re-export it with a supported opset"
        ) from None
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True)
    except Exception as exc:  # shape inference errors are varied C++ exceptions
        log.warning("shape inference failed on %s (%s); continuing without it", name, exc)
    return Model(proto=proto, name=name, source=source)


def _is_torch_module(obj: Any) -> bool:
    cls_names = {c.__module__ + "." + c.__name__ for c in type(obj).__mro__}
    return "torch.nn.modules.module.Module" in cls_names


def _load_torch(
    module: Any,
    example_inputs: tuple[Any, ...],
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    opset: int,
) -> Model:
    try:
        import torch
    except ImportError:
        raise MissingExtraError("torch", "torch", "loading a PyTorch module") from None
    names_in = list(
        input_names or [f"input_{i}" if i else "input" for i in range(len(example_inputs))]
    )
    was_training = module.training
    module.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="edgetune-export-") as tmp:
            path = Path(tmp) / "model.onnx"
            _export(torch, module, example_inputs, path, names_in, output_names, opset)
            model = _load_file(path)
    finally:
        module.train(was_training)
    return Model(proto=model.proto, name=type(module).__name__, source=None)


def _export(
    torch: Any,
    module: Any,
    example_inputs: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: Sequence[str] | None,
    opset: int,
) -> None:
    """Export with torch's ``torch.export``-based exporter, the batch axis of every input dynamic.

    torch.export specializes a dimension of size 1, so a batch-1 example is repeated to two.
    """
    batch = torch.export.Dim("batch")
    examples = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in example_inputs)
    try:
        torch.onnx.export(
            module,
            examples,
            str(path),
            input_names=input_names,
            output_names=list(output_names or ["output"]),
            dynamic_shapes=tuple({0: batch} for _ in examples),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    except Exception as exc:  # exporter failures come in many types
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"torch.onnx.export failed for {type(module).__name__}: {first}; check that "
            "example_inputs match the module's forward() signature"
        ) from exc
