"""analyze and optimize end to end on tiny models; candidates, budgets, plans, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgetune.optimize as opt
from edgetune.analyze.saturation import SaturationRisk
from edgetune.cli import cli
from edgetune.core.isa import Isa
from edgetune.errors import ConfigError
from edgetune.optimize.candidates import candidate_choices, weight_bytes
from edgetune.optimize.config import AnalyzeConfig, Objective, OptimizeConfig, parse_precisions
from edgetune.optimize.search import _NoiseModel, verify_plan
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_mlp, tiny_mlp_data
from edgetune.transforms.plan import (
    LayerChoice,
    Plan,
    Precision,
    QuantLayer,
    apply_plan,
    find_layers,
)
from edgetune.transforms.settings import WeightType

P = Precision
FAST = AnalyzeConfig(metric="fidelity", target_isa=Isa.AVX2, probe_samples=8, measure_layers=1,
                     measure_limit=16, profile_runs=3, calib_limit=32, preprocess=False)
FAST_LATENCY = {"warmup": 1, "min_iters": 5, "max_iters": 20, "min_seconds": 0.0, "max_seconds": 0.5}


def _risk(at_risk: bool) -> SaturationRisk:
    return SaturationRisk(layer="l", kernel="u8s8", isa=Isa.AVX2, pairs=100,
                          saturated_pairs=3 if at_risk else 0)


def test_full_range_weights_only_where_no_pair_saturates() -> None:
    layer = find_layers(tiny_mlp())[0]
    risky = candidate_choices(layer, [P.INT8], Isa.AVX2, _risk(True))
    safe = candidate_choices(layer, [P.INT8], Isa.AVX2, _risk(False))
    full = [c for c in risky if c.precision is P.INT8 and c.weights is WeightType.S8 and not c.reduce_range]
    assert not full
    assert any(c.weights is WeightType.S8 and not c.reduce_range for c in safe if c.precision is P.INT8)
    vnni = candidate_choices(layer, [P.INT8], Isa.AVX512_VNNI, _risk(True))
    assert all(not c.reduce_range for c in vnni if c.precision is P.INT8)
    assert candidate_choices(layer, [P.INT8], Isa.AVX2, None)[0] == LayerChoice()


def test_weight_bytes_are_exact_for_int4_and_int8() -> None:
    layer = QuantLayer(name="m", op_type="MatMul", weight="w", activation="x", output="y",
                       weight_shape=(256, 64))
    assert weight_bytes(layer, LayerChoice()) == 4 * 256 * 64
    assert weight_bytes(layer, LayerChoice(precision=P.INT8)) == 256 * 64 + 5 * 64
    assert weight_bytes(layer, LayerChoice(precision=P.INT4, block_size=32)) == 256 * 64 // 2 + 4 * 64 * 8
    assert weight_bytes(layer, LayerChoice(precision=P.INT4, block_size=128, symmetric=False)) == (
        256 * 64 // 2 + 4 * 64 * 2 + 64)


def test_noise_model_inverts() -> None:
    model = _NoiseModel(gamma=0.5, points=[(1e-4, 0.002), (4e-4, 0.004)])
    assert model.beta == pytest.approx(0.2)
    budget = model.budget_for(0.005)
    assert budget is not None and model.predict(budget) == pytest.approx(0.005)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="max_drop"):
        OptimizeConfig(max_drop=-0.1)
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        parse_precisions("int8,int3")
    assert parse_precisions("int4, fp16,int4") == (P.INT4, P.FP16)


@pytest.fixture(scope="module")
def mlp_analysis():
    model = tiny_mlp(features=32, hidden=64)
    data, held_out = tiny_mlp_data(64, features=32), tiny_mlp_data(48, seed=5, features=32)
    return model, data, held_out, opt.analyze(model, FAST, data=data, eval_data=held_out)


def test_analyze_ranks_layers_with_costs_and_advice(mlp_analysis) -> None:
    _, _, _, result = mlp_analysis
    names = [a.name for a in result.layers]
    assert sorted(names) == ["fc1", "fc2"]
    assert result.layers[0].sensitivity >= result.layers[1].sensitivity
    for a in result.layers:
        assert a.fp32.choice == LayerChoice() and a.fp32.size_bytes == 4 * a.layer.weight_params
        assert a.best(P.INT4) is not None and a.best(P.INT8_DYNAMIC) is not None
        assert a.reason and a.macs > 0
    measured = [c for a in result.layers for c in a.choices if c.sensitivity.metric_drop is not None]
    assert measured, "the most sensitive layer's metric drop is measured"
    json.dumps(result.to_dict(), default=float)


@pytest.mark.parametrize("objective", [Objective.SIZE, Objective.LATENCY])
def test_optimize_meets_the_budget_and_the_plan_reproduces(mlp_analysis, objective: Objective) -> None:
    model, data, held_out, analysis = mlp_analysis
    config = OptimizeConfig(max_drop=0.01, objective=objective, analyze=FAST, max_verifications=4,
                            latency=_latency())
    result = opt.optimize(model, config, data=data, eval_data=held_out, analysis=analysis)
    assert result.meets_budget and result.result.drop <= 0.01
    assert result.candidates[0].label == "float32" and result.chosen in range(len(result.candidates))
    if objective is Objective.LATENCY:
        assert result.result.latency_ratio <= 1.0  # never slower than float32
    again = Plan.from_dict(json.loads(result.plan.to_json()))
    rebuilt = apply_plan(model, again, data=data)
    if result.chosen == 0:  # float32 itself was best: the plan has no quantized layer
        assert not again.layers and result.model.to_bytes() == model.to_bytes()
    else:
        assert rebuilt.model.to_bytes() == result.model.to_bytes()
    assert result.plan.info["meets_budget"] is True
    assert set(result.pareto) <= set(range(len(result.candidates)))


def test_evaluations_are_cached_across_runs(mlp_analysis, tmp_path: Path) -> None:
    model, data, held_out, analysis = mlp_analysis
    config = OptimizeConfig(max_drop=0.01, analyze=FAST, max_verifications=3, latency=_latency(),
                            cache_dir=tmp_path / "cache")
    first = opt.optimize(model, config, data=data, eval_data=held_out, analysis=analysis)
    second = opt.optimize(model, config, data=data, eval_data=held_out, analysis=analysis)
    assert not any(c.cached for c in first.candidates)
    # the second run replays the first from the cache (cached builds do not count against
    # max_verifications, so it may then search further) and never ends worse
    n = len(first.candidates)
    assert all(c.cached for c in second.candidates[1:n])
    assert [c.metric for c in second.candidates[:n]] == [c.metric for c in first.candidates]
    assert second.result.size_bytes <= first.result.size_bytes and second.meets_budget


def test_time_budget_still_returns_a_verified_model(mlp_analysis) -> None:
    model, data, held_out, analysis = mlp_analysis
    config = OptimizeConfig(max_drop=0.01, analyze=FAST, time_budget_s=1e-6, latency=_latency())
    result = opt.optimize(model, config, data=data, eval_data=held_out, analysis=analysis)
    assert result.stopped == "time budget reached"
    assert result.meets_budget and result.chosen == 0


def test_a_plan_that_misses_the_budget_is_reported() -> None:
    model, data = tiny_mlp(features=32, hidden=64), tiny_mlp_data(32, features=32)
    plan = Plan(layers={n: LayerChoice(precision=P.INT4, block_size=16) for n in ("fc1", "fc2")},
                preprocess=False, info={"max_drop": 0.0})
    check = verify_plan(model, plan, data=data, eval_data=tiny_mlp_data(16, seed=3, features=32),
                        metric="fidelity")
    assert check.drop > 0 and check.meets_budget is False and check.max_drop == 0.0
    assert verify_plan(model, plan, data=data, eval_data=tiny_mlp_data(16, seed=3, features=32),
                       metric="fidelity", max_drop=1.0).meets_budget is True


def test_package_is_callable() -> None:
    assert callable(opt)
    assert opt.optimize is not None and opt.analyze is not None


def _latency():
    from edgetune.benchmark.latency import LatencyConfig

    return LatencyConfig(**FAST_LATENCY)


@pytest.fixture
def cnn_paths(tmp_path: Path) -> dict[str, Path]:
    paths = {"model": tmp_path / "cnn.onnx", "calib": tmp_path / "calib.npz", "eval": tmp_path / "eval.npz"}
    tiny_cnn(channels=16).save(paths["model"])
    np.savez(paths["calib"], **tiny_cnn_data(48))
    np.savez(paths["eval"], **tiny_cnn_data(32, seed=7))
    return paths


def test_cli_analyze_and_optimize(cnn_paths: dict[str, Path], tmp_path: Path) -> None:
    common = [str(cnn_paths["model"]), "--calib", str(cnn_paths["calib"]), "--eval",
              str(cnn_paths["eval"]), "--metric", "fidelity", "--measure-layers", "1",
              "--target-isa", "avx2"]
    runner = CliRunner()
    out = runner.invoke(cli, ["analyze", *common, "--report", str(tmp_path / "a.json"),
                              "--html", str(tmp_path / "a.html")])
    assert out.exit_code == 0, out.output
    assert "Layers by sensitivity" in out.output and (tmp_path / "a.html").exists()
    args = ["optimize", *common, "--max-drop", "0.02", "--max-verifications", "2", "-o",
            str(tmp_path / "m.onnx"), "--plan", str(tmp_path / "plan.json"), "--html",
            str(tmp_path / "o.html"), "--json"]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["optimize"]["meets_budget"] is True
    assert (tmp_path / "m.onnx").exists() and "Pareto" in (tmp_path / "o.html").read_text()
    assert json.loads((tmp_path / "plan.json").read_text())["schema"] == "edgetune.plan/1"


def test_cli_rejects_unknown_precision(cnn_paths: dict[str, Path]) -> None:
    out = CliRunner().invoke(cli, ["analyze", str(cnn_paths["model"]), "--calib", str(cnn_paths["calib"]),
                                   "--eval", str(cnn_paths["eval"]), "--precisions", "int2"])
    assert out.exit_code == 2 and "unknown precision" in out.output


def test_quantize_with_plan_reports_a_missed_budget(tmp_path: Path) -> None:
    from edgetune.cli.optimize import quantize_with_plan

    model_path, calib, evald = tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "e.npz"
    tiny_mlp(features=32, hidden=64).save(model_path)
    np.savez(calib, **tiny_mlp_data(32, features=32))
    np.savez(evald, **tiny_mlp_data(16, seed=3, features=32))
    plan = Plan(layers={n: LayerChoice(precision=P.INT4, block_size=16) for n in ("fc1", "fc2")},
                preprocess=False, info={"max_drop": 0.0})
    plan_path = plan.save(tmp_path / "plan.json")
    kwargs = {"calib": str(calib), "metric": "fidelity", "report_path": tmp_path / "r.json",
              "html_path": tmp_path / "r.html", "as_json": False}
    code = quantize_with_plan(model_path, plan_path, eval_data=str(evald), output=tmp_path / "q.onnx", **kwargs)
    assert code == 1 and (tmp_path / "q.onnx").exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["plan_check"]["meets_budget"] is False
    assert "MISSES" in (tmp_path / "r.html").read_text()
    assert quantize_with_plan(model_path, plan_path, eval_data=None, output=tmp_path / "p.onnx", **kwargs) == 0


@pytest.mark.e2e
def test_demo_cnn_mixed_precision_meets_half_a_point() -> None:
    """The real demo CNN: a verified plan within 0.5 points of top-1 that is smaller than float32
    and than the uniform 8-bit anchor, rebuilt bit for bit from its plan file."""
    from edgetune.demo import asset_path
    from edgetune.errors import ModelError

    try:
        model, calib, evald = (asset_path(n) for n in ("model_fp32.onnx", "calib.npz", "eval.npz"))
    except ModelError:
        pytest.skip("demo assets are not built")
    config = OptimizeConfig(max_drop=0.005, max_verifications=5, latency=_latency(),
                            analyze=AnalyzeConfig(metric="top1", target_isa=Isa.AVX2, measure_layers=2,
                                                  profile_runs=5))
    result = opt.optimize(model, config, data=calib, eval_data=evald)
    assert result.meets_budget and result.result.drop <= 0.005
    anchor = next(c for c in result.candidates if c.label.startswith("uniform 8-bit"))
    assert result.result.size_bytes < min(anchor.size_bytes, result.candidates[0].size_bytes)
    rebuilt = apply_plan(model, Plan.from_dict(json.loads(result.plan.to_json())), data=calib)
    assert rebuilt.model.to_bytes() == result.model.to_bytes()
