"""build_cascade, the cascade directory, recalibration and their CLI (tiny models in code)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetune.cascade import (
    CascadeConfig,
    CascadeRunner,
    GateMetric,
    RecalibrateConfig,
    Target,
    TargetNotMetError,
    build_cascade,
    load_cascade,
    recalibrate,
)
from edgetune.cascade.testing import tiny_pair, tiny_pair_data
from edgetune.cli import cli
from edgetune.errors import ConfigError, DataError, ModelError, OutputError

COSTS = {"cost_small_ms": 1.0, "cost_large_ms": 10.0, "cost_network_ms": 5.0}


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(noise=0.05)


@pytest.fixture(scope="module")
def data(pair) -> dict[str, np.ndarray]:
    return tiny_pair_data(pair[1], 1500)


@pytest.fixture(scope="module")
def built(pair, data):
    config = CascadeConfig(target=Target(max_drop=0.03), **COSTS)
    return build_cascade(pair[0], pair[1], config, data=data)


def test_build_certifies_the_target_and_escalates_only_part(built) -> None:
    spec = built.spec
    assert spec.guarantee["bounds"]["harm"] <= 0.03
    assert 0.0 < spec.expected["escalation"] < 1.0
    assert spec.expected["metric"] >= spec.expected["large_metric"] - 0.03
    assert spec.data["n_fit"] == 600 and spec.data["n_certify"] == 900
    assert spec.expected["expected_latency_ms"] == pytest.approx(
        1 + spec.expected["escalation"] * 15
    )
    assert "95% confidence" in spec.guarantee["statement"]


def test_report_has_calibration_and_the_whole_curve(built) -> None:
    cal, trade = built.report["calibration"], built.report["tradeoff"]
    assert {"ece_before", "ece_after", "reliability_before", "reliability_after"} <= set(cal)
    assert set(cal["scores"]) == {"max_prob", "margin", "entropy"}
    points = trade["points"]
    assert points[0]["escalation"] == 0.0 and points[-1]["escalation"] == 1.0
    assert points[trade["chosen_index"]]["threshold"] == built.gate.threshold


def test_saved_directory_round_trips_and_runs(built, data, tmp_path: Path) -> None:
    out = built.save(tmp_path / "casc")
    loaded = load_cascade(out)
    assert loaded.spec == built.spec
    assert sorted(p.name for p in out.iterdir()) == [
        "cascade.json",
        "large.onnx",
        "reference.json",
        "report.html",
        "report.json",
        "small.onnx",
    ]
    assert "<svg" in (out / "report.html").read_text()
    runner = CascadeRunner(loaded)
    answer = runner.predict({"x": data["x"][:64]})
    assert answer.output.shape == (64, 4) and len(answer.sources) == 64
    assert set(answer.sources) <= {"small", "large"}
    assert [s == "large" for s in answer.sources] == answer.escalated.tolist()


def test_tampered_model_is_refused(built, tmp_path: Path) -> None:
    out = built.save(tmp_path / "casc")
    (out / "large.onnx").write_bytes((out / "large.onnx").read_bytes() + b"\x00")
    with pytest.raises(ModelError, match="does not match the SHA-256"):
        load_cascade(out)


def test_existing_directory_needs_overwrite_and_must_be_a_cascade(built, tmp_path: Path) -> None:
    out = built.save(tmp_path / "casc")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        built.save(out)
    built.save(out, overwrite=True)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(OutputError, match="not a cascade directory"):
        built.save(precious, overwrite=True)
    assert (precious / "thesis.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_agreement_metric_needs_no_labels(pair, data) -> None:
    config = CascadeConfig(target=Target(min_metric=0.95), metric=GateMetric.AGREEMENT, **COSTS)
    result = build_cascade(pair[0], pair[1], config, data={"x": data["x"]})
    assert result.spec.expected["large_metric"] == 1.0
    assert result.spec.guarantee["bounds"]["error"] <= 0.05


def test_top1_without_labels_and_impossible_targets_say_how_to_fix(pair, data) -> None:
    with pytest.raises(DataError, match="needs labels"):
        build_cascade(
            pair[0],
            pair[1],
            CascadeConfig(target=Target(max_drop=0.05), **COSTS),
            data={"x": data["x"]},
        )
    with pytest.raises(TargetNotMetError, match="loosen the target"):
        build_cascade(
            pair[0], pair[1], CascadeConfig(target=Target(min_metric=0.999), **COSTS), data=data
        )
    with pytest.raises(ConfigError, match="needs a target"):
        CascadeConfig(target=Target()).validated()


def test_recalibrate_refits_on_shifted_data_and_keeps_the_target(
    built, pair, tmp_path: Path
) -> None:
    out = built.save(tmp_path / "casc")
    shifted = tiny_pair_data(pair[1], 1500, seed=21, scale=0.6)
    result = recalibrate(out, RecalibrateConfig(), data=shifted)
    assert result.build.spec.target == built.spec.target
    assert result.build.spec.models == built.spec.models
    assert set(result.changes()) >= {"threshold", "temperature", "escalation"}
    result.save(out)
    assert load_cascade(out).spec.gate == result.build.spec.gate


def _cli(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_build_and_recalibrate(pair, data, tmp_path: Path) -> None:
    paths = {"small": tmp_path / "s.onnx", "large": tmp_path / "l.onnx", "val": tmp_path / "v.npz"}
    pair[0].save(paths["small"]), pair[1].save(paths["large"])
    np.savez(paths["val"], **data)
    out = tmp_path / "casc"
    common = ["--eval", str(paths["val"]), "--cost-small", "1", "--cost-large", "10"]
    result = _cli(
        "cascade",
        "build",
        str(paths["small"]),
        str(paths["large"]),
        *common,
        "--max-drop",
        "0.03",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "chosen >" in result.output and "95% confidence" in result.output
    result = _cli(
        "cascade",
        "recalibrate",
        str(out),
        "--eval",
        str(paths["val"]),
        "--max-escalation",
        "0.5",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["guarantee"]["bounds"]["escalation"] <= 0.5


def test_cli_usage_errors_exit_2_with_one_line(pair, tmp_path: Path) -> None:
    model = tmp_path / "s.onnx"
    pair[0].save(model)
    result = _cli(
        "cascade", "build", str(model), str(model), "--eval", "x.npz", "-o", str(tmp_path / "c")
    )
    assert result.exit_code == 2 and "needs a target" in result.output
    result = _cli(
        "cascade",
        "build",
        str(model),
        str(model),
        "--eval",
        "x.npz",
        "--max-drop",
        "1.5",
        "-o",
        str(tmp_path / "c"),
    )
    assert (
        result.exit_code == 2
        and "'max_drop' parameter of Target must be in [0, 1]" in result.output
    )


def _with_softmax(model):
    from onnx import helper

    proto = model.copy_proto()
    out = proto.graph.output[0]
    proto.graph.node.append(helper.make_node("Softmax", [out.name], ["probs"], axis=1))
    new_out = helper.make_tensor_value_info("probs", out.type.tensor_type.elem_type, None)
    proto.graph.output.pop()
    proto.graph.output.append(new_out)
    return model.with_proto(proto, name="tiny_small_probs")


def test_small_model_giving_probabilities_is_gated_on_their_logarithms(pair, data) -> None:
    config = CascadeConfig(target=Target(max_drop=0.03), **COSTS)
    with_logits = build_cascade(pair[0], pair[1], config, data=data)
    with_probs = build_cascade(_with_softmax(pair[0]), pair[1], config, data=data)
    assert with_probs.gate.probabilities and not with_logits.gate.probabilities
    assert with_probs.gate.temperature == pytest.approx(with_logits.gate.temperature, rel=1e-3)
    assert with_probs.spec.expected["escalation"] == pytest.approx(
        with_logits.spec.expected["escalation"], abs=0.01
    )


def test_html_report_draws_reliability_and_tradeoff(built) -> None:
    from edgetune.report import render_html

    html = render_html(built.report)
    assert "Reliability diagram" in html and "Trade-off" in html and "chosen" in html
    assert html.count("<svg") >= 2 and "expected calibration error" in html


def test_cli_serve_refuses_a_bad_remote_before_starting(built, tmp_path: Path) -> None:
    out = built.save(tmp_path / "casc")
    result = _cli("cascade", "serve", str(out), "--port", "1", "--remote", "ftp://x")
    assert result.exit_code == 2 and "not an http(s) URL" in result.output


def test_public_names_resolve() -> None:
    import edgetune.cascade as cascade

    for name in cascade.__all__:
        assert getattr(cascade, name) is not None, name


def check_demo_cascade(demo_dir: Path, tmp_path: Path) -> None:
    """The demo student (float32) and teacher: certify on eval[:1000], test on eval[1000:]."""
    from edgetune.cascade.threshold import clopper_pearson_lower

    with np.load(demo_dir / "eval.npz") as npz:
        evaluation = {k: npz[k] for k in npz.files}
    certify = {k: v[:1000] for k, v in evaluation.items()}
    test = {k: v[1000:] for k, v in evaluation.items()}
    config = CascadeConfig(target=Target(max_drop=0.005), cost_small_ms=1.0, cost_large_ms=3.0)
    result = build_cascade(demo_dir / "model_fp32.onnx", demo_dir / "teacher_fp32.onnx", config,
                           data=certify, fit_data=demo_dir / "calib.npz")  # fmt: skip
    assert result.spec.guarantee["bounds"]["harm"] <= 0.005
    runner = CascadeRunner(result.save(tmp_path / "demo-cascade"))
    answer = runner.predict({"input": test["input"]})
    labels = test["labels"]
    cascade_right = answer.output.argmax(axis=1) == labels
    large_right = runner.large({"input": test["input"]}).argmax(axis=1) == labels
    small_right = runner.local({"input": test["input"]}).output.argmax(axis=1) == labels
    harm = int(np.sum(~answer.escalated & ~small_right & large_right))
    assert answer.escalated.mean() <= 0.30
    assert cascade_right.mean() >= large_right.mean() - 0.01
    assert clopper_pearson_lower(harm, len(labels), 0.95) <= 0.005  # test split agrees


@pytest.mark.e2e
def test_demo_cascade_meets_its_bound_on_a_split_it_never_saw(tmp_path: Path) -> None:
    from edgetune.demo import asset_path

    check_demo_cascade(asset_path("eval.npz").parent, tmp_path)
