"""GPTQ rounding of 4-bit MatMul weights: better output error, exact levels, built as predicted."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.errors import ConfigError, DataError, QuantizationError
from edgetune.runtimes import get_runtime
from edgetune.testing.tiny import tiny_embedding
from edgetune.transforms.gptq import gptq_int4
from edgetune.transforms.plan import LayerChoice, Plan, Precision, apply_plan, find_layers, prepare
from edgetune.transforms.rounding import int4_weight_qdq


def _outputs(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    return get_runtime("onnxruntime").session(model).run(feed)[0]


def _correlated(rows: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) / np.sqrt(k) + np.eye(k)
    return (rng.normal(size=(rows, k)) * rng.uniform(0.2, 3.0, size=k)) @ mix


def test_gptq_lowers_the_output_error_of_nearest_rounding() -> None:
    inputs, w = _correlated(2560, 128), np.random.default_rng(1).normal(size=(128, 64)).astype(np.float32)
    x, test = inputs[:2048], inputs[2048:]  # calibration rows, and held-out rows of the same inputs
    layer = next(lay for lay in find_layers(tiny_embedding()[0]) if lay.op_type == "MatMul")
    nearest = int4_weight_qdq(w, layer, LayerChoice(precision=Precision.INT4, block_size=32))
    ours = gptq_int4(w, x.T @ x, 32)
    err = {name: float(np.sum((test @ (q - w)) ** 2)) for name, q in (("nearest", nearest), ("gptq", ours))}
    assert err["gptq"] < 0.7 * err["nearest"]


def test_every_block_keeps_its_extreme_at_minus_8() -> None:
    """What lets ONNX Runtime's packer re-derive exactly these scales and levels."""
    x, w = _correlated(512, 64), np.random.default_rng(3).normal(size=(64, 16)).astype(np.float32)
    q = gptq_int4(w, x.T @ x, 16).reshape(4, 16, 16)  # [blocks, rows, columns]
    for b in range(4):
        for c in range(16):
            col = q[b, :, c].astype(np.float64)
            ext = col[np.argmax(np.abs(col))]
            levels = col / (ext / -8.0)
            assert np.allclose(levels, np.round(levels), atol=1e-4)
            assert levels.min() >= -8 - 1e-4 and levels.max() <= 7 + 1e-4


def test_gptq_matmul_is_built_exactly_as_predicted() -> None:
    model, data = tiny_embedding()
    prepared = prepare(model, data=data, preprocess=False, with_stats=False)
    layer = next(lay for lay in prepared.layers() if lay.name == "proj")
    choice = LayerChoice(precision=Precision.INT4, block_size=16, gptq=True)
    result = apply_plan(model, Plan(layers={"proj": choice}, preprocess=False), prepared=prepared)
    from onnx import numpy_helper

    table, w = (numpy_helper.to_array(i) for i in model.proto.graph.initializer)
    want_w = gptq_int4(w, prepared.input_hessians([layer])["proj"], 16)
    assert np.abs(want_w - int4_weight_qdq(w, layer, choice)).max() > 1e-4  # not nearest rounding
    feed = {"ids": data["ids"][:4]}
    np.testing.assert_allclose(_outputs(result.model, feed), table[feed["ids"]] @ want_w, rtol=1e-5, atol=1e-5)


def test_gptq_choices_round_trip_and_are_refused_where_they_do_not_apply() -> None:
    choice = LayerChoice(precision=Precision.INT4, block_size=32, gptq=True)
    assert LayerChoice.from_dict(choice.to_dict()) == choice and "gptq" in choice.label()
    assert "gptq" not in LayerChoice(precision=Precision.INT4).to_dict()
    with pytest.raises(ConfigError, match="symmetric"):
        LayerChoice(precision=Precision.INT4, symmetric=False, gptq=True)
    model, data = tiny_embedding()
    with pytest.raises(ConfigError, match="MatMul layers only"):
        apply_plan(model, Plan(layers={"embed": choice}, preprocess=False), data=data)
    with pytest.raises(DataError, match="calibration data"):
        apply_plan(model, Plan(layers={"proj": choice}, preprocess=False))
    with pytest.raises(QuantizationError, match="divide"):
        gptq_int4(np.ones((48, 4), np.float32), np.eye(48), 32)
