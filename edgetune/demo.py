"""The bundled demo: the main job on a small MNIST CNN that ships inside the package.

Everything it uses and makes is left in the output folder, so each step can be repeated by
hand with the CLI (the report lists the commands).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgetune.core.fileio import check_writable
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import ModelError, OutputError
from edgetune.pipeline import JobConfig, JobResult, quantize_and_report
from edgetune.report import write_html, write_json

__all__ = ["ASSETS", "DemoResult", "asset_path", "run_demo"]

ASSETS = ("model_fp32.onnx", "teacher_fp32.onnx", "calib.npz", "eval.npz")


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    job: JobResult
    out_dir: Path
    files: dict[str, Path]


def asset_path(name: str) -> Path:
    """Path of a bundled demo file."""
    path = Path(str(resources.files("edgetune") / "assets" / "demo" / name))
    if not path.is_file():
        raise ModelError(
            f"bundled demo file {name!r} is missing from the installed package; reinstall "
            "edgetune, or re-create it with: python scripts/train_demo.py --out edgetune/assets/demo"
        )
    return path


def run_demo(out_dir: Path | str, *, progress: Progress = NULL_PROGRESS) -> DemoResult:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create demo folder {str(out_dir)!r}: {exc.strerror}") from None
    check_writable(out_dir / "report.json", "demo output")
    files = {name: _copy(name, out_dir) for name in ASSETS}
    job = quantize_and_report(
        files["model_fp32.onnx"],
        JobConfig(metric="top1"),
        calib=files["calib.npz"],
        eval_data=files["eval.npz"],
        progress=progress,
    )
    job.report["reproduce"] = _commands(out_dir)
    files["model_int8.onnx"] = job.quantized.model.save(out_dir / "model_int8.onnx")
    files["report.json"] = write_json(job.report, out_dir / "report.json")
    files["report.html"] = write_html(job.report, out_dir / "report.html")
    return DemoResult(job=job, out_dir=out_dir, files=files)


def _copy(name: str, out_dir: Path) -> Path:
    target = out_dir / name
    tmp = out_dir / f".{name}.tmp"
    shutil.copyfile(asset_path(name), tmp)
    tmp.replace(target)
    return target


def _commands(out_dir: Path) -> list[str]:
    d = str(out_dir)
    return [
        f"edgetune quantize {d}/model_fp32.onnx --calib {d}/calib.npz --eval {d}/eval.npz "
        f"--metric top1 -o {d}/model_int8.onnx --report {d}/report.json --html {d}/report.html",
        f"edgetune evaluate {d}/model_int8.onnx --eval {d}/eval.npz --metric top1",
        f"edgetune evaluate {d}/model_int8.onnx --eval {d}/eval.npz --metric fidelity "
        f"--reference {d}/model_fp32.onnx",
    ]
