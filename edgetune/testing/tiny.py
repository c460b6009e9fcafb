"""Tiny ONNX models built in code, for fast tests (no files, no downloads)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune.core.model import Model

__all__ = ["tiny_cnn", "tiny_cnn_data", "tiny_embedding", "tiny_mlp", "tiny_mlp_data"]


def _init(name: str, array: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(array.astype(np.float32), name)


def tiny_cnn(seed: int = 0, channels: int = 8, classes: int = 4) -> Model:
    """Conv -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm, input [N,1,8,8]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [
        _init("conv.w", rng.normal(0, 0.5, (channels, 1, 3, 3))),
        _init("conv.b", rng.normal(0, 0.1, (channels,))),
        _init("bn.scale", rng.uniform(0.5, 1.5, (channels,))),
        _init("bn.bias", rng.normal(0, 0.1, (channels,))),
        _init("bn.mean", rng.normal(0, 0.1, (channels,))),
        _init("bn.var", rng.uniform(0.5, 1.5, (channels,))),
        _init("fc.w", rng.normal(0, 0.5, (classes, channels))),
        _init("fc.b", rng.normal(0, 0.1, (classes,))),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn"
        ),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"], name="pool"),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flatten"),
        helper.make_node("Gemm", ["f1", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _model(graph, "tiny_cnn")


def tiny_mlp(seed: int = 0, features: int = 16, hidden: int = 32, classes: int = 4) -> Model:
    """MatMul -> Add -> Relu -> MatMul -> Add, input [N, features]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.3, (features, hidden))),
        _init("b1", rng.normal(0, 0.1, (hidden,))),
        _init("w2", rng.normal(0, 0.3, (hidden, classes))),
        _init("b2", rng.normal(0, 0.1, (classes,))),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="fc2"),
        helper.make_node("Add", ["o0", "b2"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _model(graph, "tiny_mlp")


def _model(graph: Any, name: str) -> Model:
    import onnx
    from onnx import helper

    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto=onnx.shape_inference.infer_shapes(proto), name=name)


def tiny_cnn_data(n: int = 64, seed: int = 1, classes: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input": rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32),
        "labels": rng.integers(0, classes, n).astype(np.int64),
    }


def tiny_mlp_data(n: int = 64, seed: int = 1, features: int = 16, classes: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(0, 1, (n, features)).astype(np.float32),
        "labels": rng.integers(0, classes, n).astype(np.int64),
    }


def tiny_embedding(seed: int = 0) -> tuple[Model, dict[str, np.ndarray]]:
    """ids [N, 6] -> Gather(table [64, 32]) -> MatMul(w [32, 8]) -> y, and 16 rows of ids."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_init("table", rng.normal(0, 1, (64, 32)).astype(np.float32)),
             _init("w", rng.normal(0, 0.3, (32, 8)).astype(np.float32))]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return Model(proto=proto, name="emb"), {"ids": rng.integers(0, 64, (16, 6)).astype(np.int64)}
