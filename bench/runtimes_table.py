"""Every runtime that installs here, against the CPU baseline, on the demo CNN and MiniLM.

For the demo CNN in float32 and INT8 (edgetune's own quantization, calibrated on calib.npz) and
for all-MiniLM-L6-v2 (sentence embeddings, 128 tokens), it prints one table: p50 and p90, the
speedup against ONNX Runtime on CPU, operator placement counts (on target / on CPU by design /
fell back) and the notes edgetune attaches (slower than the baseline, INT8 slower, divergence).
Runtimes of one model are measured interleaved in one loop; the PyTorch rows come from a second
loop with the baseline, because the torch module exists only for the float32 models.

    python bench/runtimes_table.py [--threads 1] [--seconds 3] [--skip-minilm] [--json OUT.json]
        [--demo-dir DIR]

Needs the openvino, litert (ai-edge-litert + onnx2tf + tensorflow), torch and minilm extras for
all rows; rows of runtimes that cannot run here say why.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgetune.benchmark.bench import BenchConfig, bench
from edgetune.benchmark.latency import LatencyConfig
from edgetune.load import load
from edgetune.runtimes import check_runtime, get_runtime

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = (
    "onnxruntime",
    "openvino",
    "litert",
    "litert-int8",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
)


def _config(args: argparse.Namespace, runtimes: tuple[str, ...]) -> BenchConfig:
    latency = LatencyConfig(
        warmup=20,
        min_iters=200,
        max_iters=10**6,
        min_seconds=args.seconds,
        max_seconds=args.seconds * 5,
        stop_percentile=90.0,
        block=10,
        switch_runs=1,
    )
    return BenchConfig(
        runtimes=runtimes, threads=args.threads, latency=latency, cold_repeats=args.cold_repeats
    )


def _installed(settings: dict[str, dict[str, Any]]) -> tuple[tuple[str, ...], dict[str, str]]:
    ok, skipped = [], {}
    for name in RUNTIMES:
        reason = check_runtime(get_runtime(name, **settings.get(name, {})))
        if reason is None:
            ok.append(name)
        else:
            skipped[name] = reason
    return tuple(ok), skipped


def demo_student(fp32: Path) -> Any:
    """The demo's PyTorch StudentNet with the weights of the exported ONNX file."""
    import onnx
    import torch
    from onnx import numpy_helper

    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "scripts" / "train_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo"] = module
    spec.loader.exec_module(module)
    net = module.StudentNet()
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32)).graph.initializer}
    state = {k: torch.from_numpy(weights[k].copy()) for k in net.state_dict() if k in weights}
    net.load_state_dict(state, strict=False)
    missing = [
        k for k in net.state_dict() if k not in weights and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise RuntimeError(f"ONNX initializers do not name these torch weights: {missing[:3]}")
    return net.eval()


def demo(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from edgetune.demo import asset_path
    from edgetune.transforms.quantize import quantize
    from edgetune.transforms.settings import QuantizeConfig

    files = ("model_fp32.onnx", "calib.npz", "eval.npz")
    fp32, calib, data = (args.demo_dir / n if args.demo_dir else asset_path(n) for n in files)
    int8 = quantize(load(fp32), QuantizeConfig(), data=calib).model
    int8 = int8.with_proto(int8.proto, name="model_int8")
    settings = {"litert-int8": {"calibration": str(calib)}}
    names, skipped = _installed(settings)
    result = bench([load(fp32), int8], _config(args, names), data=data, runtime_settings=settings)
    sections = [result.to_dict()]
    sections.append(_torch(args, load(fp32), lambda: demo_student(fp32), data))
    return _annotate(sections, skipped)


def minilm(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from edgetune.testing import minilm as ml

    path = ml.export_minilm(tmp / "minilm.onnx")
    data = ml.tokenize_to_npz(ml.stdlib_sentences(64), tmp / "minilm.npz", max_length=128)
    names, skipped = _installed({})
    names = tuple(n for n in names if n != "litert-int8")
    skipped.pop("litert-int8", None)  # INT8 LiteRT of MiniLM is not part of this table
    result = bench(load(path), _config(args, names), data=data)
    encoder = lambda: ml._pooled_encoder(ml._load_bert())  # noqa: E731 (the exported module)
    return _annotate([result.to_dict(), _torch(args, load(path), encoder, data)], skipped)


def _torch(args: argparse.Namespace, model: Any, build: Any, data: Any) -> dict[str, Any]:
    try:
        module = build()
    except Exception as exc:  # missing extra, missing script dependency: the row says why
        return {
            "models": [
                {
                    "model": model.name,
                    "runtimes": [{"runtime": "torch", "status": "error", "reason": str(exc)[:200]}],
                }
            ]
        }
    result = bench(
        model,
        _config(args, ("onnxruntime", "torch")),
        data=data,
        runtime_settings={"torch": {"module": module}},
    )
    return result.to_dict()


def _annotate(sections: list[dict[str, Any]], skipped: dict[str, str]) -> list[dict[str, Any]]:
    for section in sections:
        section["skipped"] = skipped
    return sections


def table(sections: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | runtime | p50 ms | p90 ms | vs ORT CPU | vs float32 on ORT CPU | ops t/cpu/fb |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for section in sections:
        for model in section["models"]:
            float_base = _float_baseline(section, model)
            for e in model["runtimes"]:
                if e["runtime"] == "onnxruntime" and any(
                    r["runtime"] == "torch" for r in model["runtimes"]
                ):
                    continue  # the torch loop's own baseline row repeats the first loop's
                lines.append(_line(model, e, float_base))
    skipped = {k: v for s in sections for k, v in s.get("skipped", {}).items()}
    lines += [f"- not runnable here: {k}: {v}" for k, v in skipped.items()]
    return lines


def _float_baseline(section: dict[str, Any], model: dict[str, Any]) -> float | None:
    """p50 of ONNX Runtime on the float32 model with the same inputs, from the same loop."""
    for other in section["models"]:
        if other.get("precision") == "float32" and other.get("inputs") == model.get("inputs"):
            for e in other["runtimes"]:
                if e["runtime"] == "onnxruntime" and "latency_ms" in e:
                    return float(e["latency_ms"]["p50"])
    return None


def _line(model: dict[str, Any], e: dict[str, Any], float_base: float | None) -> str:
    if e.get("status") != "ok":
        reason = str(e.get("reason", ""))[:140]
        return (
            f"| {model['model']} | {e['runtime']} | {e.get('status')}: {reason} | - | - | - | - |"
        )
    lat, counts = e["latency_ms"], (e.get("placement") or {}).get("counts") or {}
    placed = "/".join(str(counts.get(k, 0)) for k in ("target", "cpu_by_design", "fallback"))
    vs_float = f"x{float_base / lat['p50']:.2f}" if float_base else "-"
    return (
        f"| {model['model']} | {e['runtime']} | {lat['p50']:.4f} | {lat['p90']:.4f} | "
        f"x{e['speedup_vs_baseline']:.2f} | {vs_float} | {placed if counts else '-'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cold-repeats", type=int, default=1)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument(
        "--demo-dir", type=Path, help="Folder with the demo files (default: bundled)."
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="edgetune-table-") as tmp:
        sections = demo(args, Path(tmp))
        if not args.skip_minilm:
            sections += minilm(args, Path(tmp))
    device = sections[0].get("device", {})
    print(
        f"threads {args.threads}, >= {args.seconds:.0f} s per loop, device: "
        f"{device.get('cpu_model')} ({device.get('isa')})\n"
    )
    print("\n".join(table(sections)))
    for section in sections:
        for model in section["models"]:
            for note in model.get("notes", []):
                print(f"! {model['model']}: {note}")
    if args.json:
        args.json.write_text(json.dumps(sections, indent=2, default=str))


if __name__ == "__main__":
    main()
