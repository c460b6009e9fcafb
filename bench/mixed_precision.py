"""Mixed precision against the usual anchors, side by side in one run: demo CNN and MiniLM.

For each model it prints float32, ONNX Runtime's ``quantize_static`` and ``quantize_dynamic``
defaults, NNCF's ``nncf.quantize`` defaults and ``quantize_with_accuracy_control`` (or why they
could not run), edgetune's uniform INT8 (``edgetune.quantize``), and edgetune ``optimize`` with
``--objective size`` and ``--objective latency``: metric on held-out data, size, p50 latency
(every variant of a model timed interleaved in one loop) and the time each method took (wall,
and CPU seconds of this process: the machine may be shared, CPU time is what 2 free cores need).

Budgets: demo CNN at most 0.5 points of top-1 (``max_drop=0.005``); all-MiniLM-L6-v2 on real
sentences (standard-library docstrings), mean cosine to float32 at least 0.99 (``fidelity``,
``max_drop=0.01``). On the demo, every layer's metric drop is measured to check the proxies'
ranking (Spearman rank correlation). Those INT8 and INT4 single-layer changes are mostly within
sampling noise, so ``ranking_check`` also measures every layer with its weights rounded to 2, 3
and 4 bits and correlates the proxies with the changes that a paired test resolves.

    python bench/mixed_precision.py [--skip-minilm] [--skip-nncf] [--target-isa avx2] [--json OUT]

Needs the ``bench`` extra (nncf) for the NNCF rows, ``minilm`` and ``torch`` for MiniLM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.latency import LatencyConfig, measure_interleaved
from edgetune.core.data import BoundData, bind
from edgetune.core.isa import Isa, detect_isa, parse_isa
from edgetune.core.metrics import RunOutputs, get_metric
from edgetune.core.model import Model
from edgetune.load import load
from edgetune.optimize.analysis import AnalyzeResult, analyze
from edgetune.optimize.config import AnalyzeConfig, Objective, OptimizeConfig
from edgetune.optimize.search import optimize
from edgetune.runtimes import get_runtime
from edgetune.transforms.quantize import quantize
from edgetune.validate.evaluate import run_outputs

LATENCY = LatencyConfig(warmup=20, min_iters=200, min_seconds=4.0, max_seconds=40.0, block=4)


@dataclass(kw_only=True)
class Row:
    name: str
    model: Model | None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    note: str = ""
    metric: float | None = None
    p50_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        return None if self.model is None else self.model.size_bytes


def timed(name: str, make: Callable[[], Model], **extra: Any) -> Row:
    """Run one method; a failure becomes a row that says why."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        model = make()
    except Exception as exc:  # anchors fail in many ways; the table reports it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        logging.debug("%s failed:\n%s", name, traceback.format_exc())
        return Row(name=name, model=None, note=f"could not run: {type(exc).__name__}: {first}")
    return Row(name=name, model=model, seconds=time.perf_counter() - wall,
               cpu_seconds=time.process_time() - cpu, extra=extra)


# --------------------------------------------------------------------------- anchors


def ort_static(fp32: Model, calib: BoundData, workdir: Path) -> Model:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(list(calib.feeds()))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    src, dst = workdir / "ort_static_in.onnx", workdir / "ort_static.onnx"
    fp32.save(src)
    quantize_static(str(src), str(dst), Reader())
    return load(dst)


def ort_dynamic(fp32: Model, workdir: Path) -> Model:
    from onnxruntime.quantization import quantize_dynamic

    src, dst = workdir / "ort_dynamic_in.onnx", workdir / "ort_dynamic.onnx"
    fp32.save(src)
    quantize_dynamic(str(src), str(dst))
    return load(dst)


def nncf_default(fp32: Model, calib: BoundData) -> Model:
    import nncf

    dataset = nncf.Dataset(list(calib.feeds()))
    return fp32.with_proto(nncf.quantize(fp32.copy_proto(), dataset), name=f"{fp32.name}_nncf")


def nncf_accuracy_control(fp32: Model, calib: BoundData, evald: BoundData, metric: str,
                          reference: RunOutputs, max_drop: float) -> Model:
    import nncf

    score = get_metric(metric)
    items = [(s.feed, s.label, i) for i, s in enumerate(evald.samples())]

    def validate(model: Any, data: Any) -> float:
        """NNCF may validate on a subset: compare with the float32 outputs of the same items."""
        session = get_runtime("onnxruntime").session(fp32.with_proto(model))
        per_sample, labels, index = [], [], []
        for feed, label, i in data:
            per_sample.append(session.run(feed))
            labels.append(label)
            index.append(i)
        lab = np.asarray(labels) if labels[0] is not None else None
        outs = RunOutputs(names=reference.names, per_sample=per_sample, labels=lab)
        ref = RunOutputs(names=reference.names, per_sample=[reference.per_sample[i] for i in index], labels=lab)
        return score(outs, ref).value

    quantized = nncf.quantize_with_accuracy_control(
        fp32.copy_proto(), nncf.Dataset(list(calib.feeds())),
        nncf.Dataset(items, transform_func=lambda item: item[0]),
        validation_fn=validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
    )
    return fp32.with_proto(quantized, name=f"{fp32.name}_nncf_ac")


# --------------------------------------------------------------------------- ours


def ours(fp32: Model, calib: Path, evald: Path, metric: str, max_drop: float, isa: Isa,
         analyze_config: AnalyzeConfig) -> tuple[list[Row], AnalyzeResult]:
    """Analysis once, then optimize for size and for latency (each row carries the shared
    analysis time plus its own search time)."""
    wall, cpu = time.perf_counter(), time.process_time()
    analysis = analyze(fp32, analyze_config, data=calib, eval_data=evald)
    a_wall, a_cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = []
    for objective in (Objective.SIZE, Objective.LATENCY):
        config = OptimizeConfig(max_drop=max_drop, objective=objective, analyze=analyze_config)
        wall, cpu = time.perf_counter(), time.process_time()
        result = optimize(fp32, config, data=calib, eval_data=evald, analysis=analysis)
        rows.append(Row(
            name=f"edgetune optimize ({objective.value})", model=result.model,
            seconds=a_wall + time.perf_counter() - wall, cpu_seconds=a_cpu + time.process_time() - cpu,
            extra={"result": result, "analysis_seconds": a_wall, "analysis_cpu_seconds": a_cpu},
            note=", ".join(f"{k} x{v}" for k, v in result.result.precisions().items()),
        ))
    return rows, analysis


# --------------------------------------------------------------------------- measure


def measure(fp32: Model, rows: list[Row], evald: Path, metric: str) -> None:
    """Metric on the held-out data, and p50 of every variant timed interleaved."""
    rt = get_runtime("onnxruntime")
    data = bind(evald, fp32)
    score = get_metric(metric)
    live = [r for r in rows if r.model is not None]
    sessions = {r.name: rt.session(r.model) for r in live}  # type: ignore[arg-type]
    reference = run_outputs(sessions[live[0].name], data)
    for r in live:
        r.metric = score(run_outputs(sessions[r.name], data), reference).value
    latency = measure_interleaved(sessions, list(data.feeds(limit=16)), LATENCY)
    for r in live:
        r.p50_ms = latency[r.name].p50


def dominated_by(mine: Row, rows: list[Row]) -> list[str]:
    """Anchors at least as good on metric, size and p50 at once (and better on one)."""
    out = []
    for r in rows:
        if r is mine or r.model is None or r.name.startswith("edgetune optimize") or r.name == "float32":
            continue
        assert mine.metric is not None and r.metric is not None and mine.p50_ms and r.p50_ms
        no_worse = r.metric >= mine.metric and r.size <= mine.size and r.p50_ms <= mine.p50_ms  # type: ignore[operator]
        better = r.metric > mine.metric or r.size < mine.size or r.p50_ms < mine.p50_ms  # type: ignore[operator]
        if no_worse and better:
            out.append(r.name)
    return out


def print_table(title: str, rows: list[Row], metric: str) -> None:
    base = rows[0]
    print(f"\n== {title} ==")
    print(f"{'method':40} {metric:>9} {'size KiB':>10} {'size x':>7} {'p50 ms':>8} {'p50 x':>6} "
          f"{'wall s':>7} {'cpu s':>7}  note")
    for r in rows:
        if r.model is None:
            print(f"{r.name:40} {'-':>9} {'-':>10} {'-':>7} {'-':>8} {'-':>6} {'-':>7} {'-':>7}  {r.note}")
            continue
        print(f"{r.name:40} {r.metric:9.5f} {r.size / 1024:10.1f} {r.size / base.size:7.3f} "  # type: ignore[operator]
              f"{r.p50_ms:8.3f} {r.p50_ms / base.p50_ms:6.2f} {r.seconds:7.1f} {r.cpu_seconds:7.1f}  {r.note}")  # type: ignore[operator]


def verdict(rows: list[Row], max_drop: float, uniform_name: str) -> dict[str, Any]:
    base = rows[0]
    uniform = next(r for r in rows if r.name == uniform_name)
    out: dict[str, Any] = {}
    for r in rows:
        if not r.name.startswith("edgetune optimize") or r.model is None:
            continue
        res = r.extra["result"]
        drop = (base.metric or 0.0) - (r.metric or 0.0)
        out[r.name] = {
            "meets_budget_on_eval": drop <= max_drop + 1e-12, "drop": drop,
            "size_vs_uniform_int8": r.size / uniform.size if uniform.size else None,  # type: ignore[operator]
            "p50_vs_uniform_int8": (r.p50_ms / uniform.p50_ms) if uniform.p50_ms else None,  # type: ignore[operator]
            "dominated_by": dominated_by(r, rows), "verified_candidates": len(res.candidates),
            "search_stopped": res.stopped, "analysis_seconds": r.extra["analysis_seconds"],
            "analysis_cpu_seconds": r.extra["analysis_cpu_seconds"],
        }
        print(f"{r.name}: drop {drop:+.5f} (budget {max_drop}), size {out[r.name]['size_vs_uniform_int8']:.3f}x "
              f"of our uniform INT8, p50 {out[r.name]['p50_vs_uniform_int8']:.2f}x of it; dominated by: "
              f"{out[r.name]['dominated_by'] or 'none'}; analysis+optimize {r.seconds:.0f} s wall, "
              f"{r.cpu_seconds:.0f} s CPU; search stopped: {res.stopped}")
    return out


def correlation(analysis: AnalyzeResult, metric: str) -> dict[str, Any]:
    """Spearman rank correlation of the cheap proxies with the measured single-layer drops."""
    corr = analysis.rank_correlation

    def fmt(values: dict[str, Any]) -> str:
        names = ("output_noise", "kl", "layer_noise", "weight_error")
        return ", ".join(f"{n} {values[n]:+.2f}" for n in names if values.get(n) is not None)

    for group in ("all", "int8", "int8-dynamic", "int4"):
        c = corr.get(group)
        if not isinstance(c, dict):
            continue
        overlap = next(((k, v) for k, v in c.items() if k.startswith("top")), None)
        extra = f"; {overlap[0]} overlap with the measured ranking: {overlap[1]}" if overlap else ""
        print(f"proxies vs measured single-layer {metric} drop [{group}, {c['n']} layer/precision pairs]: "
              f"{fmt(c)}{extra}")
        if "vs_flip_rate" in c:
            print(f"proxies vs measured fraction of changed predictions [{group}]: {fmt(c['vs_flip_rate'])}")
    return corr


# --------------------------------------------------------------------------- models


def run_model(title: str, fp32: Model, calib: Path, evald: Path, metric: str, max_drop: float,
              isa: Isa, config: AnalyzeConfig, skip_nncf: bool, workdir: Path) -> dict[str, Any]:
    calib_b, eval_b = bind(calib, fp32), bind(evald, fp32)
    rows = [Row(name="float32", model=fp32)]
    rows.append(timed("ORT quantize_static defaults", lambda: ort_static(fp32, calib_b, workdir)))
    rows.append(timed("ORT quantize_dynamic defaults", lambda: ort_dynamic(fp32, workdir)))
    if skip_nncf:
        rows.append(Row(name="NNCF quantize defaults", model=None, note="skipped (--skip-nncf)"))
    else:
        rows.append(timed("NNCF quantize defaults", lambda: nncf_default(fp32, calib_b)))
        reference = run_outputs(get_runtime("onnxruntime").session(fp32), eval_b)
        rows.append(timed("NNCF quantize_with_accuracy_control",
                          lambda: nncf_accuracy_control(fp32, calib_b, eval_b, metric, reference, max_drop)))
    uniform = timed("edgetune uniform INT8 (quantize)",
                    lambda: quantize(fp32, _qconfig(isa), data=calib).model)
    rows.append(uniform)
    mine, analysis = ours(fp32, calib, evald, metric, max_drop, isa, config)
    rows += mine
    measure(fp32, rows, evald, metric)
    print_table(f"{title}: {metric}, budget max drop {max_drop}, target ISA {isa.value}", rows, metric)
    summary = verdict(rows, max_drop, uniform.name)
    return {"rows": [_row_dict(r) for r in rows], "verdict": summary,
            "rank_correlation": correlation(analysis, metric), "analysis_timings": analysis.timings}


def _qconfig(isa: Isa) -> Any:
    from edgetune.transforms.settings import QuantizeConfig

    return QuantizeConfig(target_isa=isa)


def _row_dict(r: Row) -> dict[str, Any]:
    return {"method": r.name, "metric": r.metric, "size_bytes": r.size, "p50_ms": r.p50_ms,
            "seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "note": r.note}


def demo(isa: Isa, skip_nncf: bool, workdir: Path, folder: Path | None) -> dict[str, Any]:
    from edgetune.demo import asset_path

    def path(name: str) -> Path:
        return folder / name if folder is not None else asset_path(name)

    config = AnalyzeConfig(metric="top1", target_isa=isa, measure_layers=None)
    out = run_model("demo CNN (MNIST)", load(path("model_fp32.onnx")), path("calib.npz"),
                    path("eval.npz"), "top1", 0.005, isa, config, skip_nncf, workdir)
    out["ranking_check"] = ranking(path("model_fp32.onnx"), path("calib.npz"), path("eval.npz"))
    return out


def ranking(model: Path, calib: Path, evald: Path) -> dict[str, Any]:
    """The ranking check at widths where single-layer top-1 changes can be resolved."""
    from edgetune.optimize import ranking_check

    started = time.perf_counter()
    check = ranking_check(model, data=calib, eval_data=evald)
    print(f"\nranking check ({time.perf_counter() - started:.0f} s): each layer alone with weights "
          f"rounded to k bits, top-1 on {check.samples} images; a change is resolved when McNemar's "
          f"p < {check.alpha}")
    for group, c in check.correlations.items():
        rhos = ", ".join(f"{n} {c[n]:+.2f}" for n in ("output_noise", "kl", "layer_noise", "weight_error")
                         if c.get(n) is not None)
        top = f"; top-{c['top_k']} by drop also top-{c['top_k']} by output noise: {c['top_k_overlap']}" if "top_k" in c else ""
        print(f"  {group:>8}: {c['n']:2d} pairs, {c['resolved']:2d} resolved; Spearman with the measured "
              f"drop: {rhos}{top}")
    return check.to_dict()


def minilm(isa: Isa, skip_nncf: bool, workdir: Path) -> dict[str, Any]:
    from edgetune.testing.minilm import export_minilm, stdlib_sentences, tokenize_to_npz

    sentences = stdlib_sentences(384)
    fp32 = load(export_minilm(workdir / "minilm.onnx"))
    calib = tokenize_to_npz(sentences[:128], workdir / "calib.npz", max_length=64)
    evald = tokenize_to_npz(sentences[128:], workdir / "eval.npz", max_length=64)
    config = AnalyzeConfig(metric="fidelity", target_isa=isa, calib_limit=64, probe_samples=4,
                           measure_layers=4, measure_limit=64)
    return run_model("all-MiniLM-L6-v2 (256 held-out sentences)", fp32, calib, evald, "fidelity",
                     0.01, isa, config, skip_nncf, workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-nncf", action="store_true")
    parser.add_argument("--target-isa", default="avx2", help="ISA to choose settings for (default avx2)")
    parser.add_argument("--demo-dir", type=Path, help="demo files folder (default: the bundled ones)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    isa = parse_isa(args.target_isa)
    print(f"this machine: {detect_isa().value}; choosing settings for: {isa.value}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_demo:
            results["demo"] = demo(isa, args.skip_nncf, Path(tmp), args.demo_dir)
        if not args.skip_minilm:
            results["minilm"] = minilm(isa, args.skip_nncf, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
