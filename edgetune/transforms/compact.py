"""Drop bytes a runtime never reads: long internal tensor names, value_info, doc strings.

Quantization tools name every inserted tensor after its origin
(``ConvBnFusion_BN_B_features.0.1.bias_DequantizeLinear``); on a small model these strings are
a third of the INT8 file. Flash is what a microcontroller or a phone update pays for, so the
quantized model keeps only what is useful to a person: graph input and output names and the
names of the layers (every node that is not Quantize/DequantizeLinear plumbing). Internal
tensors become short ids. Outputs are unchanged (tested), and shapes are re-inferred by the
runtime at load.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compact_names"]

_PLUMBING = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def compact_names(proto: Any) -> Any:
    """Return a copy of ``proto`` with short internal names and no value_info or doc strings."""
    import copy

    out = copy.deepcopy(proto)
    graph = out.graph
    keep = {v.name for v in [*graph.input, *graph.output]}
    mapping = _short_names(graph, keep)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for node in graph.node:
        _rename_node(node, mapping)
    del graph.value_info[:]
    _clear_docs(out)
    return out


def _short_names(graph: Any, keep: set[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    names = [i.name for i in graph.initializer]
    for node in graph.node:
        names += [*node.input, *node.output]
    for name in names:
        if name and name not in keep and name not in mapping:
            mapping[name] = _base36(len(mapping))
    return mapping


def _rename_node(node: Any, mapping: dict[str, str]) -> None:
    for i, name in enumerate(node.input):
        node.input[i] = mapping.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = mapping.get(name, name)
    if node.op_type in _PLUMBING:
        node.name = ""
    node.doc_string = ""


def _clear_docs(model: Any) -> None:
    model.doc_string = ""
    model.graph.doc_string = ""
    for tensor in model.graph.initializer:
        tensor.doc_string = ""


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        n, r = divmod(n, 36)
        text = digits[r] + text
        if n == 0:
            return "t" + text
