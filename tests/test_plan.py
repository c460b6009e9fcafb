"""Plans: versioned JSON through an allow-list, and apply_plan building every precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetune.errors import ConfigError, DataError
from edgetune.runtimes import get_runtime
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_embedding, tiny_mlp, tiny_mlp_data
from edgetune.transforms.calibrate import CalibMethod
from edgetune.transforms.plan import (
    LayerChoice,
    Plan,
    Precision,
    apply_plan,
    find_layers,
    load_plan,
    prepare,
)
from edgetune.transforms.rounding import weight_qdq
from edgetune.transforms.settings import ActType, WeightType

P = Precision


def _plan() -> Plan:
    return Plan(
        layers={
            "fc1": LayerChoice(precision=P.INT8, activations=ActType.S8, weights=WeightType.U8,
                               per_channel=False, reduce_range=False, method=CalibMethod.ENTROPY),
            "fc2": LayerChoice(precision=P.INT4, block_size=16, symmetric=False, accuracy_level=4),
        },
        model_name="tiny_mlp", model_sha256="ab" * 32, calib_limit=64,
        info={"objective": "size", "reasons": ["because"]},
    )


def test_plan_round_trips_through_json(tmp_path: Path) -> None:
    plan = _plan()
    path = plan.save(tmp_path / "plan.json")
    again = load_plan(path)
    assert again == plan
    assert again.fingerprint() == plan.fingerprint()
    assert json.loads(path.read_text())["schema"] == "edgetune.plan/1"


def test_fingerprint_ignores_info_but_not_choices() -> None:
    plan = _plan()
    assert plan.with_layers(plan.layers, note="x").fingerprint() == plan.fingerprint()
    other = plan.with_layers({**plan.layers, "fc1": LayerChoice(precision=P.FP16)})
    assert other.fingerprint() != plan.fingerprint()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema="edgetune.plan/99"), "schema"),
        (lambda d: d.update(surprise=1), "unknown key"),
        (lambda d: d["layers"]["fc1"].update(block_size=32), "do not apply to int8"),
        (lambda d: d["layers"]["fc1"].update(method="magic"), "minmax"),
        (lambda d: d["layers"]["fc2"].update(block_size=24), "power of two"),
        (lambda d: d["layers"]["fc1"].update(per_channel="yes"), "true or false"),
        (lambda d: d["layers"].update(fc3={"bits": 4}), "precision"),
    ],
)
def test_plan_loading_rejects_what_is_not_allowed(edit, message: str) -> None:
    data = _plan().to_dict()
    edit(data)
    with pytest.raises(ConfigError, match=message):
        Plan.from_dict(data)


def test_unreadable_plan_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read plan"):
        load_plan(bad)


def test_find_layers_on_tiny_models() -> None:
    assert [(lay.name, lay.op_type) for lay in find_layers(tiny_mlp())] == [("fc1", "MatMul"), ("fc2", "MatMul")]
    cnn = {lay.name: lay for lay in find_layers(tiny_cnn())}
    assert cnn["conv"].weight_shape == (8, 1, 3, 3) and cnn["fc"].op_type == "Gemm"


def _outputs(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    return get_runtime("onnxruntime").session(model).run(feed)[0]


@pytest.mark.parametrize(
    "choice",
    [
        LayerChoice(precision=P.FP16),
        LayerChoice(precision=P.INT8, reduce_range=True),
        LayerChoice(precision=P.INT8, per_channel=False, weights=WeightType.U8),
        LayerChoice(precision=P.INT8_DYNAMIC, reduce_range=True),
        LayerChoice(precision=P.INT4, block_size=16),
        LayerChoice(precision=P.INT4, block_size=16, symmetric=False, accuracy_level=4),
        LayerChoice(precision=P.A16),
    ],
    ids=lambda c: c.label(),
)
def test_every_precision_builds_and_stays_close(choice: LayerChoice) -> None:
    model, data = tiny_mlp(features=32, hidden=64), tiny_mlp_data(64, features=32)
    result = apply_plan(model, Plan(layers={"fc1": choice, "fc2": choice}, preprocess=False), data=data)
    assert result.applied == {"fc1": choice.precision.value, "fc2": choice.precision.value}
    assert not result.warnings
    feed = {"x": data["x"][:8]}
    got, want = _outputs(result.model, feed), _outputs(model, feed)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98


@pytest.mark.parametrize("block", [0, 16])
def test_cnn_int4_and_int8_layers(block: int) -> None:
    data = tiny_cnn_data(32)
    plan = Plan(layers={"conv": LayerChoice(precision=P.INT4, block_size=block),
                        "fc": LayerChoice(precision=P.INT8, reduce_range=True)}, preprocess=False)
    result = apply_plan(tiny_cnn(channels=32), plan, data=data)
    assert result.applied == {"conv": "int4", "fc": "int8"}
    assert np.isfinite(_outputs(result.model, {"input": data["input"][:4]})).all()


@pytest.mark.parametrize(
    ("layer", "choice"),
    [
        ("fc", LayerChoice(precision=P.INT4, block_size=16)),
        ("fc", LayerChoice(precision=P.INT4, block_size=0, symmetric=False)),
        ("conv", LayerChoice(precision=P.INT4, block_size=0)),
        ("fc", LayerChoice(precision=P.INT8, reduce_range=True)),
        ("fc", LayerChoice(precision=P.INT8, weights=WeightType.U8, per_channel=False)),
    ],
)
def test_predicted_weights_equal_the_built_graph(layer: str, choice: LayerChoice) -> None:
    """The arithmetic sensitivity analysis uses is the one the built model runs."""
    from onnx import TensorProto, helper, numpy_helper

    model, data = tiny_cnn(channels=32), tiny_cnn_data(32)
    spec = next(lay for lay in find_layers(model) if lay.name == layer)
    result = apply_plan(model, Plan(layers={layer: choice}, preprocess=False), data=data)
    proto = result.model.copy_proto()
    node = next(n for n in proto.graph.node if n.name == layer)
    proto.graph.output.append(helper.make_tensor_value_info(node.input[1], TensorProto.FLOAT, None))
    session = get_runtime("onnxruntime").session(result.model.with_proto(proto))
    built = session.run({"input": data["input"][:1]})[-1]
    w = numpy_helper.to_array(next(i for i in model.proto.graph.initializer if i.name == spec.weight))
    np.testing.assert_allclose(weight_qdq(w, spec, choice), built, rtol=1e-6, atol=1e-7)


def test_static_layers_need_calibration_data() -> None:
    with pytest.raises(DataError, match="calibration data"):
        apply_plan(tiny_mlp(), Plan(layers={"fc1": LayerChoice(precision=P.INT8)}, preprocess=False))


def test_plan_for_another_graph_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not have"):
        apply_plan(tiny_mlp(), Plan(layers={"conv9": LayerChoice(precision=P.FP16)}, preprocess=False))
    with pytest.raises(ConfigError, match="cannot be int8-dynamic"):
        apply_plan(tiny_cnn(), Plan(layers={"conv": LayerChoice(precision=P.INT8_DYNAMIC)}, preprocess=False))


def test_prepared_model_is_reused_and_nodes_named() -> None:
    """With pre-processing on, plans name the layers of the pre-processed graph (ORT fuses
    MatMul + Add into Gemm here), and building from ``prepared`` equals building from data."""
    data = tiny_mlp_data(32)
    prepared = prepare(tiny_mlp(), data=data, calib_limit=16)
    assert all(n.name for n in prepared.model.proto.graph.node)
    names = [lay.name for lay in prepared.layers()]
    assert len(names) == 2 and prepared.stats
    plan = Plan(layers={names[1]: LayerChoice(precision=P.INT8)}, calib_limit=16)
    a = apply_plan(tiny_mlp(), plan, prepared=prepared)
    b = apply_plan(tiny_mlp(), plan, data=data)
    assert a.applied == b.applied == {names[0]: "fp32", names[1]: "int8"}
    assert a.model.to_bytes() == b.model.to_bytes()


@pytest.mark.parametrize("choice", [LayerChoice(precision=P.INT8_DYNAMIC),
                                    LayerChoice(precision=P.INT4, block_size=16),
                                    LayerChoice(precision=P.FP16)], ids=lambda c: c.label())
def test_embedding_tables(choice: LayerChoice) -> None:
    """Embedding rows come out of the built model exactly as the analysis predicts them."""
    from onnx import numpy_helper

    model, data = tiny_embedding()
    result = apply_plan(model, Plan(layers={"embed": choice}, preprocess=False), data=data)
    assert result.applied["embed"] == choice.precision.value
    layer = next(lay for lay in find_layers(model) if lay.name == "embed")
    table = numpy_helper.to_array(model.proto.graph.initializer[0])
    feed = {"ids": data["ids"][:2]}
    want = weight_qdq(table, layer, choice)[feed["ids"]] @ numpy_helper.to_array(model.proto.graph.initializer[1])
    np.testing.assert_allclose(_outputs(result.model, feed), want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="the s8-to-u8 rewrite is ONNX Runtime's x86 behaviour")
def test_signed_activations_run_as_the_same_model_on_x86() -> None:
    """Why the search offers only u8 activations on x86: ONNX Runtime rewrites s8 QDQ
    activations to u8 (zero point + 128) before its u8 x s8 kernels, so both signs give the
    same numbers on the real demo CNN (see transforms/settings.py and optimize/candidates.py)."""
    from edgetune.core.data import bind
    from edgetune.demo import asset_path
    from edgetune.validate.evaluate import run_outputs

    prepared = prepare(asset_path("model_fp32.onnx"), data=asset_path("calib.npz"), calib_limit=64)
    data, _ = bind(asset_path("eval.npz"), prepared.model).split(300)
    outputs = []
    for act in (ActType.U8, ActType.S8):
        choice = LayerChoice(precision=Precision.INT8, activations=act, weights=WeightType.S8,
                             reduce_range=True, method=CalibMethod.MINMAX)
        built = apply_plan(prepared.model, Plan(layers={lay.name: choice for lay in prepared.layers()}),
                           prepared=prepared)
        outputs.append(run_outputs(get_runtime("onnxruntime").session(built.model), data).stacked(0))
    assert np.abs(outputs[0]).max() > 1.0
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("layer_name", ["proj", "embed"])
def test_clipped_int4_blocks_survive_ort_packing(layer_name: str) -> None:
    """MatMulNBits and GatherBlockQuantized carry edgetune's clipped 4-bit levels, not ORT's
    own round-to-nearest: the built model computes with exactly the predicted weights."""
    from onnx import numpy_helper

    from edgetune.transforms.rounding import _blocked, _round_blocks

    model, data = tiny_embedding()
    choice = LayerChoice(precision=P.INT4, block_size=16)
    layer = next(lay for lay in find_layers(model) if lay.name == layer_name)
    table, w = (numpy_helper.to_array(i) for i in model.proto.graph.initializer)
    mine = weight_qdq(w if layer_name == "proj" else table, layer, choice)
    q, scale, _ = _round_blocks(_blocked(w if layer_name == "proj" else table, layer, choice), True, 1.0)
    plain = np.moveaxis((q * scale).reshape(*q.shape[:-2], -1), -1, 1 if layer_name == "embed" else 0)
    assert np.abs(mine - plain).max() > 1e-3  # clipping changed some blocks
    result = apply_plan(model, Plan(layers={layer_name: choice}, preprocess=False), data=data)
    feed = {"ids": data["ids"][:4]}
    want = (table[feed["ids"]] @ mine) if layer_name == "proj" else (mine[feed["ids"]] @ w)
    np.testing.assert_allclose(_outputs(result.model, feed), want, rtol=1e-5, atol=1e-5)
