"""Sensitivity proxies, the end-to-end noise probe, saturation simulation and profiling."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.analyze.profile import profile_layers
from edgetune.analyze.saturation import saturation_risk
from edgetune.analyze.sensitivity import (
    LayerRecord,
    NoiseProbe,
    batch_feeds,
    local_noise,
    probe_layer,
    record_layers,
    spearman,
)
from edgetune.core.data import bind
from edgetune.core.isa import Isa
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_mlp, tiny_mlp_data
from edgetune.transforms.calibrate import CalibMethod, compute_ranges
from edgetune.transforms.plan import LayerChoice, Precision, QuantLayer, find_layers, prepare

P = Precision


def _records(model, data, n: int = 16):
    prepared = prepare(model, data=data, preprocess=False, calib_limit=32)
    feeds = batch_feeds(prepared.calib_feeds[:n], prepared.model)
    layers = prepared.layers()
    ranges = compute_ranges(prepared.stats or {}, CalibMethod.MINMAX)
    return prepared, feeds, record_layers(prepared.model, layers, feeds), ranges


def test_samples_are_batched_when_the_model_allows() -> None:
    model, data = tiny_cnn(), tiny_cnn_data(8)
    feeds = list(bind(data, model).feeds())
    assert len(batch_feeds(feeds, model)) == 1
    assert batch_feeds(feeds, model)[0]["input"].shape[0] == 8


def test_numpy_layers_reproduce_the_runtime() -> None:
    """Strided, padded, grouped convolution and Gemm: the local proxies' forward is exact."""
    for model, data in ((tiny_cnn(channels=16), tiny_cnn_data(16)), (tiny_mlp(), tiny_mlp_data(16))):
        _, _, records, _ = _records(model, data)
        assert all(r.forward_ok for r in records.values())


def test_local_noise_orders_precisions() -> None:
    _, _, records, ranges = _records(tiny_mlp(features=64, hidden=64), tiny_mlp_data(32, features=64))
    rec = records["fc1"]
    noise = {c.label(): local_noise(rec, c, ranges)[1] for c in (
        LayerChoice(), LayerChoice(precision=P.FP16), LayerChoice(precision=P.INT8),
        LayerChoice(precision=P.INT4, block_size=16))}
    assert noise["fp32"] == 0.0
    assert noise["fp32"] < noise["fp16"] < noise["int8 u8/s8 8-bit per-channel minmax"] < noise["int4 block 16 sym"]


def test_probe_measures_output_noise_and_gain() -> None:
    prepared, feeds, records, _ = _records(tiny_mlp(), tiny_mlp_data(32))
    probe = NoiseProbe(prepared.model, records, feeds)
    zero = np.zeros_like(records["fc1"].y)
    assert probe.output_noise("fc1", zero)[0] == 0.0
    ranges = {m: compute_ranges(prepared.stats or {}, m) for m in CalibMethod}
    candidates = [LayerChoice(), LayerChoice(precision=P.INT8), LayerChoice(precision=P.INT4, block_size=16)]
    result = probe_layer(records["fc1"], candidates, ranges, probe, probe_all=False)
    assert result.gain is not None and result.gain > 0
    by = {c.choice.precision: c for c in result.choices}
    assert by[P.FP32].output_noise == 0.0 and not by[P.FP32].measured
    assert by[P.INT8].measured and by[P.INT4].measured
    assert by[P.INT4].output_noise > by[P.INT8].output_noise > 0


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)
    assert spearman([1, 2], [2, 1]) is None


def _matmul_record(x: np.ndarray, w: np.ndarray) -> LayerRecord:
    layer = QuantLayer(name="mm", op_type="MatMul", weight="w", activation="x", output="y",
                       weight_shape=w.shape)
    return LayerRecord(layer=layer, x=x, y=x @ w, w=w, samples=len(x))


def test_saturation_is_simulated_on_pairs() -> None:
    """Two u8 codes of 255 times weights of +-127 overflow 16 bits; small weights do not."""
    x = np.ones((4, 8), np.float32)  # every activation at the top of its range -> code 255
    big = np.ones((8, 3), np.float32)
    risky = saturation_risk(_matmul_record(x, big), (0.0, 1.0), Isa.AVX2)
    assert risky.at_risk and risky.fraction == 1.0 and risky.max_abs_pair == 2 * 255 * 127
    tiny_pairs = big.copy()
    tiny_pairs[1::2] = 0.0  # only one product per pair: 255 * 127 fits
    assert not saturation_risk(_matmul_record(x, tiny_pairs), (0.0, 1.0), Isa.AVX2).at_risk
    vnni = saturation_risk(_matmul_record(x, big), (0.0, 1.0), Isa.AVX512_VNNI)
    assert vnni.saturated_pairs > 0 and not vnni.at_risk  # 32-bit dot products on the target


def test_depthwise_convolutions_carry_no_risk() -> None:
    layer = QuantLayer(name="dw", op_type="Conv", weight="w", activation="x", output="y",
                       weight_shape=(4, 1, 3, 3), attrs={"group": 4})
    rec = LayerRecord(layer=layer, x=np.ones((1, 4, 5, 5), np.float32), y=np.zeros(1),
                      w=np.ones((4, 1, 3, 3), np.float32))
    risk = saturation_risk(rec, (0.0, 1.0), Isa.AVX2)
    assert not risk.simulated and "depthwise" in risk.kernel


def test_conv_saturation_on_real_activations() -> None:
    _, _, records, ranges = _records(tiny_cnn(channels=8), tiny_cnn_data(16))
    risk = saturation_risk(records["conv"], ranges["input"], Isa.AVX2)
    assert risk.simulated and risk.pairs > 0 and 0.0 <= risk.fraction <= 1.0


def test_profile_attributes_time_to_layers() -> None:
    model, data = tiny_cnn(channels=16), tiny_cnn_data(4)
    layers = find_layers(model)
    profile = profile_layers(model, layers, {"input": data["input"][:1]}, runs=5, warmup=1)
    assert set(profile.per_layer_ms) == {"conv", "fc"}
    assert profile.per_layer_ms["conv"] > 0 and profile.kernel_ms >= profile.per_layer_ms["conv"]
