from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune.cli import cli


def _run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_quantize_writes_model_and_reports(cnn_files: dict[str, Path], tmp_path: Path) -> None:
    out, rep, html = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "r.html"
    result = _run(
        "quantize",
        str(cnn_files["model"]),
        "--calib",
        str(cnn_files["calib"]),
        "--eval",
        str(cnn_files["eval"]),
        "--target-isa",
        "avx2",
        "-o",
        str(out),
        "--report",
        str(rep),
        "--html",
        str(html),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(rep.read_text())
    assert report["schema"] == "edgetune.report/1"
    assert report["quantization"]["target_isa"] == "avx2"
    assert report["quantization"]["saturation_free_on_target"] is True
    assert {"p50", "p90"} <= set(report["result"]["latency_ms"])
    assert report["layers"] and out.stat().st_size > 0
    assert "<svg" in html.read_text()


def test_evaluate_json_has_metric(cnn_files: dict[str, Path]) -> None:
    result = _run(
        "evaluate",
        str(cnn_files["model"]),
        "--eval",
        str(cnn_files["eval"]),
        "--metric",
        "fidelity",
        "--reference",
        str(cnn_files["model"]),
        "--json",
    )
    assert result.exit_code == 0
    assert json.loads(result.output)["metric"] == pytest.approx(1.0)


def test_not_onnx_gives_one_line_and_exit_1(tmp_path: Path, cnn_files: dict[str, Path]) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x00garbage" * 10)
    result = _run(
        "quantize", str(bogus), "--calib", str(cnn_files["calib"]), "-o", str(tmp_path / "q.onnx")
    )
    assert result.exit_code == 1
    assert "not a valid ONNX file" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calib", "nothere.npz"], "does not exist"),
        (["--calib", "nosuch_mod_xyz:fn"], "cannot import"),
        (["--calib", "CALIB", "--eval", "CALIB", "--metric", "nosuch_mod_xyz:fn"], "cannot import"),
    ],
)
def test_bad_inputs_leave_no_output(
    cnn_files: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "q.onnx"
    args = [a.replace("CALIB", str(cnn_files["calib"])) for a in extra]
    result = _run("quantize", str(cnn_files["model"]), *args, "-o", str(out))
    assert result.exit_code == 1 and message in result.output
    assert not out.exists() and not list(tmp_path.glob(".q.onnx*"))


def test_unwritable_output_fails_before_work(cnn_files: dict[str, Path], tmp_path: Path) -> None:
    result = _run(
        "quantize",
        str(cnn_files["model"]),
        "--calib",
        str(cnn_files["calib"]),
        "-o",
        str(tmp_path / "no" / "such" / "dir" / "q.onnx"),
    )
    assert result.exit_code == 1 and "does not exist" in result.output


def test_usage_errors_exit_2(cnn_files: dict[str, Path]) -> None:
    assert _run("quantize", str(cnn_files["model"])).exit_code == 2  # --calib missing
    assert (
        _run(
            "quantize", str(cnn_files["model"]), "--calib", "x", "-o", "y", "--method", "magic"
        ).exit_code
        == 2
    )
