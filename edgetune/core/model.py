"""The model handle every verb takes and returns: an ONNX graph plus where it came from.

A :class:`Model` is never changed in place: transformations copy the proto and return a new
handle, so a caller's model stays as it was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgetune.core.fileio import atomic_path
from edgetune.errors import ModelError, OutputError

if TYPE_CHECKING:
    import onnx

__all__ = ["Dim", "Model", "TensorSpec"]

Dim = int | str | None
"""One dimension: a fixed size, a symbolic name (``"batch"``), or unknown (``None``)."""


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def describe(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else ",".join("?" if d is None else str(d) for d in self.shape)
        )
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True, kw_only=True)
class Model:
    """An ONNX model and its provenance. Treat ``proto`` as read-only; use :meth:`copy_proto`."""

    proto: onnx.ModelProto
    name: str
    source: Path | None = None
    _bytes: list[bytes] = field(default_factory=list, repr=False, compare=False)

    @property
    def inputs(self) -> list[TensorSpec]:
        """The graph inputs a caller must feed (initializers listed as inputs are left out)."""
        initializers = {init.name for init in self.proto.graph.initializer}
        return [_spec(v) for v in self.proto.graph.input if v.name not in initializers]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [_spec(v) for v in self.proto.graph.output]

    def to_bytes(self) -> bytes:
        """The serialized model, computed once."""
        if not self._bytes:
            self._bytes.append(self.proto.SerializeToString())
        return self._bytes[0]

    @property
    def size_bytes(self) -> int:
        return len(self.to_bytes())

    def copy_proto(self) -> onnx.ModelProto:
        return copy.deepcopy(self.proto)

    def op_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.proto.graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return dict(sorted(counts.items()))

    def with_proto(self, proto: onnx.ModelProto, *, name: str | None = None) -> Model:
        """A new handle for a transformed graph, keeping provenance."""
        return Model(proto=proto, name=name or self.name, source=self.source)

    def save(self, path: Path | str) -> Path:
        """Write the model atomically; a failure leaves no partial file."""
        path = Path(path)
        data = self.to_bytes()
        try:
            with atomic_path(path, "model output") as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise OutputError(f"cannot write model to {str(path)!r}: {exc}") from exc
        return path


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        raise ModelError(
            f"graph input/output {value_info.name!r} is not a tensor; edgetune supports tensor "
            "inputs and outputs only"
        )
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    if not tensor_type.HasField("shape"):
        return TensorSpec(name=value_info.name, dtype=dtype, shape=None)
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return TensorSpec(name=value_info.name, dtype=dtype, shape=tuple(dims))
