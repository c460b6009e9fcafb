"""edgetune bench / diverge / agent through click's CliRunner, in process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetune.cli import cli
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data

QUICK = ["--min-seconds", "0", "--max-seconds", "0.3", "--cold-repeats", "0"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "model": tmp_path / "cnn.onnx",
        "other": tmp_path / "other.onnx",
        "eval": tmp_path / "eval.npz",
    }
    tiny_cnn().save(paths["model"])
    tiny_cnn(seed=5).save(paths["other"])
    np.savez(paths["eval"], **tiny_cnn_data(48, seed=7))
    return paths


def test_bench_json_report_and_html(files: dict[str, Path], tmp_path: Path) -> None:
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    args = [
        "bench",
        str(files["model"]),
        "--runtime",
        "onnxruntime",
        "--batch",
        "2",
        *QUICK,
        "--json",
        "--report",
        str(report),
        "--html",
        str(html),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    model = data["bench"]["models"][0]
    assert model["batch"] == 2 and model["inputs"]["input"] == [2, 1, 8, 8]
    assert model["fastest"] == "onnxruntime"
    assert json.loads(report.read_text())["kind"] == "bench"
    assert "Warm latency percentiles" in html.read_text()


def test_bench_prints_a_table(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        cli, ["bench", str(files["model"]), "--runtime", "onnxruntime", *QUICK]
    )
    assert result.exit_code == 0, result.output
    assert "p90 ms (CI)" in result.output and "fastest: onnxruntime" in result.output


def test_unknown_runtime_is_a_usage_error_listing_the_known(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(cli, ["bench", str(files["model"]), "--runtime", "tflite", *QUICK])
    assert result.exit_code == 2
    assert "unknown runtime 'tflite'; choose one of:" in result.output
    assert "litert" in result.output and "openvino" in result.output


def test_missing_runtime_names_its_extra(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = CliRunner().invoke(
        cli, ["bench", str(files["model"]), "--runtime", "openvino", *QUICK]
    )
    assert result.exit_code == 1
    assert "pip install 'edgetune[openvino]'" in result.output


def test_bad_shape_option(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(cli, ["bench", str(files["model"]), "--shape", "input:1,x", *QUICK])
    assert result.exit_code == 2 and "NAME:1,128" in result.output


def test_diverge_passes_for_the_same_model_on_another_runtime(files: dict[str, Path]) -> None:
    args = [
        "diverge",
        str(files["model"]),
        str(files["model"]),
        "--runtime",
        "onnxruntime",
        "--eval",
        str(files["eval"]),
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)["divergence"]
    assert d["passed"] and d["reference"]["metric"] == "top1"
    row = d["rows"][0]
    assert row["max_abs_diff"] == 0.0 and row["cosine_mean"] == pytest.approx(1.0)
    assert row["layers"]["tensors"] and row["layers"]["worst"]["cosine_min"] == pytest.approx(1.0)


def test_diverge_fails_with_exit_1_when_the_metric_drops(
    files: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "d.json"
    args = [
        "diverge",
        str(files["model"]),
        str(files["other"]),
        "--runtime",
        "onnxruntime",
        "--eval",
        str(files["eval"]),
        "--metric",
        "fidelity",
        "--max-drop",
        "0.001",
        "--report",
        str(report),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "FAIL" in result.output
    rows = json.loads(report.read_text())["divergence"]["rows"]
    assert rows[0]["passed"] is False and rows[0]["metric_drop"] > 0.001


def test_agent_refuses_a_public_address_without_allow_remote() -> None:
    result = CliRunner().invoke(cli, ["agent", "--host", "0.0.0.0", "--port", "9"])
    assert result.exit_code == 2
    assert "--allow-remote" in result.output
