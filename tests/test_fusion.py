"""Fusion candidates against ONNX Runtime's optimized graph, on a small hand-checked model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgetune.analyze._graphinfo import graph_info
from edgetune.analyze.fusion import compare, find_candidates
from edgetune.analyze.layout import RuntimeView, capture_view, layout_report
from edgetune.analyze.silicon import InspectConfig, inspect
from edgetune.core.model import Model
from edgetune.testing.tiny import tiny_mlp


def _model(nodes: list[Any], inits: list[Any], x_shape: list[int], y_shape: list[int],
           name: str) -> Model:
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, name, [value("x", TensorProto.FLOAT, x_shape)],
                              [value("z", TensorProto.FLOAT, y_shape)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto=onnx.shape_inference.infer_shapes(proto), name=name)


def _gelu(x: str, out: str, prefix: str, half_first: bool) -> list[Any]:
    """GELU spelled out: (1 + erf) * 0.5 * x when ``half_first``, else x * (1 + erf) * 0.5."""
    from onnx import helper

    n = helper.make_node
    head = [n("Div", [x, "sqrt2"], [f"{prefix}0"], name=f"{prefix}_div"),
            n("Erf", [f"{prefix}0"], [f"{prefix}1"], name=f"{prefix}_erf"),
            n("Add", [f"{prefix}1", "one"], [f"{prefix}2"], name=f"{prefix}_add")]
    if half_first:
        return [*head, n("Mul", [f"{prefix}2", "half"], [f"{prefix}3"], name=f"{prefix}_half"),
                n("Mul", [x, f"{prefix}3"], [out], name=f"{prefix}_mul")]
    return [*head, n("Mul", [x, f"{prefix}2"], [f"{prefix}3"], name=f"{prefix}_mul"),
            n("Mul", [f"{prefix}3", "half"], [out], name=f"{prefix}_half")]


def hand_model() -> Model:
    """Six candidates, each outcome checked by hand against ONNX Runtime's rules:

    conv1+bn1+relu1  fused (ConvBNFusion, then Conv+Relu)
    conv2+softplus2  not fused: no ONNX Runtime Conv fusion takes Softplus
    conv3+relu3      blocked: conv3's output also feeds skip3
    fc+fc_bias+relu  fused (MatMulAddFusion, then FusedGemm)
    gelu a           not fused: (1+erf)*0.5*x is not an order GeluFusion matches
    gelu b           fused: x*(1+erf)*0.5 becomes com.microsoft.Gelu
    """
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), w("s1", 8), w("t1", 8), w("m1", 8),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "v1"),
             w("w2", 8, 8, 3, 3), w("w3", 8, 8, 3, 3), w("fw", 8, 16), w("fb", 16),
             w("gw", 16, 16), w("hw", 16, 16),
             *(numpy_helper.from_array(np.float32(v), k) for k, v in
               (("sqrt2", np.sqrt(2)), ("one", 1.0), ("half", 0.5)))]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        n("BatchNormalization", ["c1", "s1", "t1", "m1", "v1"], ["n1"], name="bn1"),
        n("Relu", ["n1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
        n("Softplus", ["c2"], ["a2"], name="softplus2"),
        n("Conv", ["a2", "w3"], ["c3"], name="conv3", pads=[1] * 4),
        n("Relu", ["c3"], ["r3"], name="relu3"),
        n("Add", ["c3", "r3"], ["s3"], name="skip3"),
        n("GlobalAveragePool", ["s3"], ["p"], name="pool"),
        n("Flatten", ["p"], ["f"], name="flatten"),
        n("MatMul", ["f", "fw"], ["m"], name="fc"),
        n("Add", ["m", "fb"], ["mb"], name="fc_bias"),
        n("Relu", ["mb"], ["mr"], name="fc_relu"),
        n("MatMul", ["mr", "gw"], ["g"], name="fc2"),
        *_gelu("g", "y", "ga", half_first=True),
        n("MatMul", ["y", "hw"], ["h"], name="fc3"),
        *_gelu("h", "z", "gb", half_first=False),
    ]
    return _model(nodes, inits, [1, 3, 16, 16], [1, 16], "hand")


def _by_nodes(report: Any) -> dict[tuple[str, ...], Any]:
    return {f.candidate.nodes: f for f in report.findings}


def test_candidates_match_the_hand_count() -> None:
    found = {c.nodes: c for c in find_candidates(graph_info(hand_model()))}
    assert set(found) == {
        ("conv1", "bn1", "relu1"), ("conv2", "softplus2"), ("conv3", "relu3"),
        ("fc", "fc_bias", "fc_relu"),
        ("ga_div", "ga_erf", "ga_add", "ga_half", "ga_mul"),
        ("gb_div", "gb_erf", "gb_add", "gb_mul", "gb_half"),
    }
    assert found[("conv1", "bn1", "relu1")].internal == ("c1", "n1")
    assert found[("conv3", "relu3")].blocked == "'c3' also feeds Add 'skip3'"
    assert found[("conv2", "softplus2")].pattern == "Conv+Softplus"
    assert found[("ga_div", "ga_erf", "ga_add", "ga_half", "ga_mul")].variant == "(1+erf)*0.5*x"


def test_fused_vs_candidates_on_onnxruntime_matches_hand_check() -> None:
    info = graph_info(hand_model())
    report = compare(info, capture_view(hand_model(), runs=0))
    got = {nodes: f.status for nodes, f in _by_nodes(report).items()}
    assert got == {
        ("conv1", "bn1", "relu1"): "fused",
        ("conv2", "softplus2"): "not fused",
        ("conv3", "relu3"): "blocked",
        ("fc", "fc_bias", "fc_relu"): "fused",
        ("ga_div", "ga_erf", "ga_add", "ga_half", "ga_mul"): "not fused",
        ("gb_div", "gb_erf", "gb_add", "gb_mul", "gb_half"): "fused",
    }
    findings = _by_nodes(report)
    assert "Softplus runs as its own kernel" in findings[("conv2", "softplus2")].reason
    assert "GeluFusion" in findings[("ga_div", "ga_erf", "ga_add", "ga_half", "ga_mul")].reason
    assert findings[("fc", "fc_bias", "fc_relu")].fused_into == ("ms:FusedGemm",)
    assert findings[("gb_div", "gb_erf", "gb_add", "gb_mul", "gb_half")].fused_into == ("ms:Gelu",)
    assert report.counts() == {"fused": 3, "partial": 0, "not fused": 2, "blocked": 1, "unknown": 0}


def test_qdq_group_becomes_an_integer_kernel() -> None:
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.float32(0.01), "ws"),
             numpy_helper.from_array(np.int8(0), "wz"),
             numpy_helper.from_array(np.float32(0.05), "s"),
             numpy_helper.from_array(np.uint8(128), "zp")]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
             n("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
             n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w"),
             n("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1] * 4),
             n("QuantizeLinear", ["c", "s", "zp"], ["cq"], name="q_out"),
             n("DequantizeLinear", ["cq", "s", "zp"], ["z"], name="dq_out")]
    model = _model(nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8], "qdq")
    report = compare(graph_info(model), capture_view(model, runs=0))
    [finding] = report.findings
    assert finding.candidate.pattern == "QDQ Conv"
    assert finding.candidate.nodes == ("dq_in", "dq_w", "conv", "q_out")
    assert finding.status == "fused"
    assert any("QLinearConv" in op for op in finding.fused_into)


def test_null_runtime_cannot_tell() -> None:
    report = compare(graph_info(tiny_mlp()), capture_view(tiny_mlp(), "null"))
    assert [f.status for f in report.findings] == ["unknown", "unknown"]
    assert layout_report(tiny_mlp(), capture_view(tiny_mlp(), "null")).conversions == ()


def test_inspect_times_the_runtime_graph_and_reports_every_section() -> None:
    result = inspect(hand_model(), InspectConfig(profile_runs=3))
    report = result.report()
    assert {"fusions", "layout", "memory", "model"} <= set(report)
    optimized = capture_view(hand_model(), runs=0).optimized
    optimized_ops = {n.name: n.op_type for n in optimized.graph.node}
    for conversion in result.layout.conversions:
        assert optimized_ops[conversion.name] in ("Transpose", "ReorderInput", "ReorderOutput")
        assert conversion.median_us is not None
    if result.layout.conversion_us is not None:
        assert result.layout.conversion_us <= (result.layout.kernel_total_us or 0) + 1e-9


def _node(op_type: str, name: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, name=name, **attrs)


def test_layout_flags_a_conversion_that_is_undone_around_one_operator() -> None:
    """Transpose to NHWC, one op, Transpose back: flagged; the same without the way back: not."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [_node("Transpose", "to_nhwc", ["x"], ["t"], perm=[0, 2, 3, 1]),
             _node("Relu", "op", ["t"], ["u"]),
             _node("Transpose", "to_nchw", ["u"], ["v"], perm=[0, 3, 1, 2]),
             _node("Transpose", "again", ["v"], ["z"], perm=[0, 2, 3, 1])]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [value("z", TensorProto.FLOAT, [1, 3, 4, 2])])
    optimized = helper.make_model(graph)
    view = RuntimeView(runtime="onnxruntime", version="test", level="test", optimized=optimized)
    original = Model(proto=onnx.ModelProto(), name="empty")
    report = layout_report(original, view)
    flags = {c.name: c.flag for c in report.conversions}
    assert flags["to_nhwc"] is not None and "Relu 'op'" in flags["to_nhwc"]
    assert flags["to_nchw"] is None and flags["again"] is None
    assert all(c.inserted for c in report.conversions)


@pytest.mark.e2e
def test_minilm_fusions_explain_the_dynamic_shape(tmp_path: Any) -> None:
    minilm = pytest.importorskip("edgetune.testing.minilm")
    pytest.importorskip("torch")
    from edgetune.analyze.memory import MemoryConfig
    from edgetune.load import load

    model = load(minilm.export_minilm(tmp_path / "minilm.onnx"))
    result = inspect(model, InspectConfig(profile_runs=2, memory=MemoryConfig(dims={"seq": 32})))
    statuses = {(f.candidate.kind, f.status) for f in result.fusions.findings}
    assert ("skip_layernorm", "fused") in statuses
    unfused = [f for f in result.fusions.findings if f.candidate.kind == "matmul_add_act"
               and f.status == "not fused"]
    assert unfused and all("is dynamic in the model" in f.reason for f in unfused)
