from __future__ import annotations

import numpy as np
import pytest

from edgetune.core.isa import Isa, isa_from_flags, parse_isa
from edgetune.errors import ConfigError, QuantizationError
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_mlp, tiny_mlp_data
from edgetune.transforms.calibrate import CalibMethod, TensorStats, compute_ranges
from edgetune.transforms.layers import layer_table
from edgetune.transforms.quantize import quantize
from edgetune.transforms.settings import (
    ActType,
    QuantizeConfig,
    QuantMode,
    WeightType,
    candidate_settings,
)


@pytest.mark.parametrize(
    ("machine", "flags", "isa"),
    [
        ("x86_64", {"avx2", "fma"}, Isa.AVX2),
        ("x86_64", {"avx2", "avx512bw"}, Isa.AVX512),
        ("x86_64", {"avx2", "avx512bw", "avx512_vnni"}, Isa.AVX512_VNNI),
        ("x86_64", {"avx2", "avx_vnni"}, Isa.AVX_VNNI),
        ("aarch64", {"asimd"}, Isa.ARM64),
        ("x86_64", {"sse2"}, Isa.GENERIC),
    ],
)
def test_isa_from_cpu_flags(machine: str, flags: set[str], isa: Isa) -> None:
    assert isa_from_flags(machine, flags) is isa


def test_unknown_isa_lists_choices() -> None:
    with pytest.raises(ConfigError, match="avx2"):
        parse_isa("sse9")


@pytest.mark.parametrize("isa", list(Isa))
def test_every_default_candidate_is_saturation_free(isa: Isa) -> None:
    cands = candidate_settings(QuantizeConfig(), isa, ["Conv", "MatMul", "Relu"])
    assert cands and all(c.saturation_free_on(isa) for c in cands)
    assert {c.mode for c in cands} == {QuantMode.STATIC, QuantMode.DYNAMIC}


def test_avx2_never_uses_full_range_u8s8() -> None:
    for c in candidate_settings(QuantizeConfig(), Isa.AVX2, ["Conv"]):
        assert c.weights is WeightType.U8 or c.reduce_range


def test_pinned_settings_apply_to_every_candidate() -> None:
    config = QuantizeConfig(
        mode=QuantMode.STATIC, activations=ActType.S8, per_channel=False, method=CalibMethod.ENTROPY
    )
    cands = candidate_settings(config, Isa.AVX512_VNNI, ["Conv", "Gemm"])
    assert all(c.activations is ActType.S8 and not c.per_channel for c in cands)
    assert all(c.method is CalibMethod.ENTROPY and "method" in c.forced for c in cands)


def test_no_dynamic_candidates_without_matmul() -> None:
    cands = candidate_settings(QuantizeConfig(), Isa.AVX2, ["Conv", "Gemm"])
    assert {c.mode for c in cands} == {QuantMode.STATIC}


def _stats(values: np.ndarray) -> TensorStats:
    st = TensorStats(name="t")
    st.update_range(values)
    st.update_hist(values)
    return st


def test_calibration_ranges_on_a_known_distribution() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 200_000), [40.0]])  # one outlier
    st = {"t": _stats(x)}
    lo, hi = compute_ranges(st, CalibMethod.MINMAX)["t"]
    assert hi == pytest.approx(40.0) and lo < -3.5
    for method in (CalibMethod.PERCENTILE, CalibMethod.ENTROPY):
        lo, hi = compute_ranges(st, method, percentile=99.99)["t"]
        assert 2.0 < hi < 12.0, method  # the lone outlier is clipped away
        assert lo < 0 < hi


def test_mse_clips_a_heavy_tail_but_keeps_a_costly_lone_outlier() -> None:
    rng = np.random.default_rng(0)
    heavy = rng.laplace(0, 1, 200_000)
    lo, hi = compute_ranges({"t": _stats(heavy)}, CalibMethod.MSE)["t"]
    assert hi < 0.8 * heavy.max() and lo > 0.8 * heavy.min()
    # one 40-sigma value costs more squared error clipped than the finer grid saves
    lone = np.concatenate([rng.normal(0, 1, 200_000), [40.0]])
    assert compute_ranges({"t": _stats(lone)}, CalibMethod.MSE)["t"][1] > 20.0


def test_ranges_always_contain_zero() -> None:
    st = {"t": _stats(np.linspace(2.0, 5.0, 1000))}
    for method in CalibMethod:
        lo, hi = compute_ranges(st, method)["t"]
        assert lo == 0.0 and hi > 2.0


def test_quantize_tiny_cnn_is_faithful_and_leaves_input_alone() -> None:
    model = tiny_cnn()
    before = model.to_bytes()
    result = quantize(model, QuantizeConfig(target_isa=Isa.AVX2), data=tiny_cnn_data(64))
    assert model.to_bytes() == before
    assert result.settings.saturation_free_on(Isa.AVX2)
    assert result.chosen.score > 0.999
    assert any(layer.precision == "int8" for layer in layer_table(result.model))
    assert result.to_dict()["saturation_free_on_target"] is True
    tried = {c.settings.method for c in result.candidates}
    assert tried == set(CalibMethod)  # the refinement round tries every calibration method


def test_dynamic_mode_on_matmul_model() -> None:
    result = quantize(
        tiny_mlp(), QuantizeConfig(mode=QuantMode.DYNAMIC, preprocess=False), data=tiny_mlp_data(32)
    )
    assert result.settings.mode is QuantMode.DYNAMIC
    assert "MatMulInteger" in result.model.op_types()


def test_quantizing_nothing_is_an_error() -> None:
    with pytest.raises(QuantizationError, match="no operator was quantized"):
        quantize(
            tiny_cnn(),
            QuantizeConfig(op_types=("LSTM",), mode=QuantMode.STATIC),
            data=tiny_cnn_data(16),
        )


def test_bad_config_values() -> None:
    with pytest.raises(ConfigError, match="percentile"):
        QuantizeConfig(percentile=100.0)


def test_compact_names_keeps_outputs_and_layer_names() -> None:
    from edgetune.runtimes import get_runtime
    from edgetune.transforms.compact import compact_names

    q = quantize(tiny_cnn(), QuantizeConfig(mode=QuantMode.STATIC), data=tiny_cnn_data(64)).model
    layer_names = {n.name for n in q.proto.graph.node if "Quantize" not in n.op_type}
    again = q.with_proto(compact_names(q.proto))  # idempotent on an already compact model
    assert {n.name for n in again.proto.graph.node if n.name} >= layer_names - {""}
    assert again.size_bytes <= q.size_bytes
    feed = {"input": tiny_cnn_data(1)["input"]}
    rt = get_runtime("onnxruntime")
    np.testing.assert_array_equal(rt.session(q).run(feed)[0], rt.session(again).run(feed)[0])
    assert [i.name for i in again.proto.graph.input] == ["input"]


def test_atomic_files_get_normal_permissions(tmp_path) -> None:
    import os

    from edgetune.core.fileio import atomic_write_text

    path = atomic_write_text(tmp_path / "r.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
