"""Graph passes keep outputs equal (within float tolerance) and check before and after."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from edgetune.core.model import Model
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_mlp
from edgetune.transforms.fold_bn import (
    FoldBatchNorm,
    FuseConvActivation,
    fold_batchnorm,
    fuse_conv_bn_act,
)
from edgetune.transforms.passes import (
    GraphPass,
    PassError,
    check_equivalent,
    run_pass,
    run_passes,
)

_RNG = np.random.default_rng(11)


def _feeds(shape: tuple[int, ...], n: int = 4, name: str = "x") -> list[dict[str, np.ndarray]]:
    return [{name: _RNG.normal(0, 1, shape).astype(np.float32)} for _ in range(n)]


def _build(nodes: list[Any], params: dict[str, np.ndarray], x_shape: list[int],
           y_shape: list[int], opset: int = 17) -> Model:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in params.items()]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, x_shape)],
                              [value("y", TensorProto.FLOAT, y_shape)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto=onnx.shape_inference.infer_shapes(proto), name="g")


def _bn_params(prefix: str, channels: int) -> dict[str, np.ndarray]:
    return {f"{prefix}.scale": _RNG.uniform(0.5, 1.5, channels),
            f"{prefix}.bias": _RNG.normal(0, 0.2, channels),
            f"{prefix}.mean": _RNG.normal(0, 0.2, channels),
            f"{prefix}.var": _RNG.uniform(0.3, 2.0, channels)}


def _bn(x: str, prefix: str, out: str, **attrs: Any) -> Any:
    from onnx import helper

    names = [f"{prefix}.{k}" for k in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [out], name=prefix, **attrs)


def test_fold_batchnorm_keeps_outputs_and_leaves_the_caller_model_alone() -> None:
    model = tiny_cnn()
    result = fold_batchnorm(model)
    assert result.modified
    assert result.changes == ("folded BatchNormalization 'bn' into Conv 'conv'",)
    assert "BatchNormalization" not in result.model.op_types()
    assert "BatchNormalization" in model.op_types()
    data = tiny_cnn_data(6)["input"]
    assert check_equivalent(model, result.model, [{"input": x[None]} for x in data]) < 1e-5
    assert not fold_batchnorm(result.model).modified


@pytest.mark.parametrize(("group", "bias"), [(1, True), (1, False), (4, True)])
def test_fold_into_grouped_and_biasless_convs(group: int, bias: bool) -> None:
    from onnx import helper

    params = {"w": _RNG.normal(0, 0.5, (8, 8 // group, 3, 3)), **_bn_params("bn", 8)}
    inputs = ["x", "w"]
    if bias:
        params["b"] = _RNG.normal(0, 0.1, 8)
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c"], name="conv", group=group, pads=[1] * 4),
             _bn("c", "bn", "y", epsilon=1e-3)]
    model = _build(nodes, params, [1, 8, 6, 6], [1, 8, 6, 6])
    result = fold_batchnorm(model)
    assert result.model.op_types() == {"Conv": 1}
    check_equivalent(model, result.model, _feeds((1, 8, 6, 6)))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_into_gemm_with_alpha_and_beta(trans_b: int) -> None:
    from onnx import helper

    w = _RNG.normal(0, 0.5, (6, 5) if trans_b else (5, 6))
    params = {"w": w, "c": _RNG.normal(0, 0.1, 6), **_bn_params("bn", 6)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="fc", transB=trans_b,
                              alpha=0.7, beta=1.3), _bn("g", "bn", "y")]
    model = _build(nodes, params, [3, 5], [3, 6])
    result = fold_batchnorm(model)
    assert result.model.op_types() == {"Gemm": 1}
    check_equivalent(model, result.model, _feeds((3, 5)))


def test_batchnorm_is_not_folded_when_the_conv_output_is_read_twice() -> None:
    from onnx import helper

    params = {"w": _RNG.normal(0, 0.5, (4, 4, 1, 1)), **_bn_params("bn", 4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             _bn("c", "bn", "n"), helper.make_node("Add", ["c", "n"], ["y"], name="add")]
    model = _build(nodes, params, [1, 4, 3, 3], [1, 4, 3, 3])
    result = fold_batchnorm(model)
    assert not result.modified and result.model is model


def _conv_act(act: str, opset: int = 17, **attrs: Any) -> Model:
    from onnx import helper

    params: dict[str, np.ndarray] = {"w": _RNG.normal(0, 0.5, (4, 3, 3, 3)),
                                     "b": _RNG.normal(0, .1, 4)}
    inputs = ["c"]
    if act == "Clip":
        params.update(lo=np.float32(-0.3), hi=np.float32(0.4))
        inputs += ["lo", "hi"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node(act, inputs, ["y"], name="act", **attrs)]
    return _build(nodes, params, [1, 3, 5, 5], [1, 4, 5, 5], opset)


@pytest.mark.parametrize(("act", "attrs"), [("Relu", {}), ("Clip", {}), ("Sigmoid", {}),
                                            ("Tanh", {}), ("LeakyRelu", {"alpha": 0.2}),
                                            ("HardSigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_conv_activation_fusion_keeps_outputs(act: str, attrs: dict[str, float]) -> None:
    model = _conv_act(act, **attrs)
    result = FuseConvActivation()(model)
    assert result.model.op_types() == {"FusedConv": 1}
    check_equivalent(model, result.model, _feeds((1, 3, 5, 5)))


def test_conv_bn_activation_on_a_residual_net_keeps_outputs() -> None:
    from onnx import helper

    params = {"w1": _RNG.normal(0, .3, (4, 4, 3, 3)), "w2": _RNG.normal(0, .3, (4, 4, 3, 3)),
              **_bn_params("bn1", 4), **_bn_params("bn2", 4)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             _bn("c1", "bn1", "n1"), helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             _bn("c2", "bn2", "n2"), helper.make_node("Add", ["n2", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu2")]
    model = _build(nodes, params, [1, 4, 6, 6], [1, 4, 6, 6])
    result = fuse_conv_bn_act(model)
    assert result.model.op_types() == {"Add": 1, "Conv": 1, "FusedConv": 1, "Relu": 1}
    assert len(result.changes) == 3
    check_equivalent(model, result.model, _feeds((1, 4, 6, 6)))


def test_check_equivalent_catches_a_different_model() -> None:
    with pytest.raises(PassError, match="differ"):
        check_equivalent(tiny_mlp(seed=0), tiny_mlp(seed=1), _feeds((2, 16)))


class _RenamesOutput(GraphPass):
    name: ClassVar[str] = "renames-output"

    def change(self, proto: Any) -> list[str]:
        proto.graph.node[-1].output[0] = "other"
        proto.graph.output[0].name = "other"
        return ["renamed the output"]


class _Nothing(GraphPass):
    name: ClassVar[str] = "nothing"

    def change(self, proto: Any) -> list[str]:
        return []


def test_postcondition_refuses_a_changed_interface() -> None:
    with pytest.raises(PassError, match="changed the model's inputs or outputs"):
        run_pass(_RenamesOutput(), tiny_mlp())


def test_precondition_refuses_an_invalid_model() -> None:
    proto = tiny_mlp().copy_proto()
    proto.graph.node[0].input[1] = "missing"
    with pytest.raises(PassError, match="invalid before fold-batchnorm"):
        FoldBatchNorm()(tiny_mlp().with_proto(proto))


def test_run_passes_reports_modified_only_when_something_changed() -> None:
    unchanged = run_passes([_Nothing(), FoldBatchNorm()], tiny_mlp())
    assert not unchanged.modified and unchanged.changes == ()
    changed = run_passes([FoldBatchNorm(), FuseConvActivation()], tiny_cnn())
    assert changed.modified and changed.model.op_types()["FusedConv"] == 1


@pytest.mark.e2e
def test_passes_on_the_demo_model_keep_its_outputs() -> None:
    from edgetune.demo import asset_path
    from edgetune.errors import ModelError
    from edgetune.load import load

    try:
        model, data = load(asset_path("model_fp32.onnx")), np.load(asset_path("eval.npz"))
    except ModelError:
        pytest.skip("demo assets are not built")
    result = fuse_conv_bn_act(model)
    assert "BatchNormalization" not in result.model.op_types()
    assert result.model.op_types().get("FusedConv", 0) > 0
    feeds = [{"input": x[None]} for x in data["input"][:16]]
    check_equivalent(model, result.model, feeds, rtol=1e-4, atol=1e-4)
