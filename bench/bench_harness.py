"""Is edgetune's latency honest? Two checks in one run, on one model, with ONNX Runtime on CPU.

1. Our p50 against a plain timing loop around ``InferenceSession.run`` on the same model
   (goal: within 5%). The two are measured alternately, five times, so both see the same
   machine; the ratio of each pair is reported, and their median.
2. The spread of our p50 over those five repetitions, (max - min) / median (goal: within 5%,
   MLPerf Mobile's replicability rule).

    python bench/bench_harness.py [--model PATH] [--threads 1] [--seconds 3] [--json OUT.json]

The default model is the bundled demo CNN (``edgetune.demo.asset_path('model_fp32.onnx')``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.bench import BenchConfig, bench
from edgetune.benchmark.latency import LatencyConfig
from edgetune.load import load

REPETITIONS = 5
GOAL = 0.05


def plain_loop_p50(
    path: Path, feed: dict[str, np.ndarray], threads: int, seconds: float
) -> tuple[float, int]:
    """The simplest honest measurement: a session, a warm-up, then time every run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(50):
        session.run(None, feed)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times)), len(times)


def edgetune_p50(path: Path, threads: int, seconds: float) -> tuple[float, int, dict[str, Any]]:
    latency = LatencyConfig(
        warmup=50,
        min_iters=200,
        max_iters=10**7,
        min_seconds=seconds,
        max_seconds=seconds * 3,
        stop_percentile=90.0,
    )
    config = BenchConfig(
        runtimes=("onnxruntime",),
        threads=threads,
        samples=1,
        latency=latency,
        cold_repeats=0,
        placement=False,
    )
    entry = bench(path, config).to_dict()["models"][0]["runtimes"][0]
    return entry["latency_ms"]["p50"], entry["latency_ms"]["n"], entry["latency_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path = args.model or _demo_model()
    model = load(path)
    rng = np.random.default_rng(0)
    feed = {
        i.name: rng.normal(size=[1 if not isinstance(d, int) else d for d in i.shape or ()]).astype(
            i.dtype
        )
        for i in model.inputs
    }
    rows = []
    for rep in range(REPETITIONS):
        plain, n_plain = plain_loop_p50(path, feed, args.threads, args.seconds)
        ours, n_ours, lat = edgetune_p50(path, args.threads, args.seconds)
        rows.append(
            {
                "rep": rep + 1,
                "plain_p50_ms": plain,
                "plain_n": n_plain,
                "edgetune_p50_ms": ours,
                "edgetune_n": n_ours,
                "ratio": ours / plain,
                "stop": lat["stop_reason"],
            }
        )
        print(
            f"rep {rep + 1}: plain loop p50 {plain:.4f} ms (n={n_plain}), "
            f"edgetune p50 {ours:.4f} ms "
            f"(n={n_ours}, {lat['stop_reason']}), ratio {ours / plain:.4f}"
        )
    _summary(rows, path, args)


def _summary(rows: list[dict[str, Any]], path: Path, args: argparse.Namespace) -> None:
    ratios = np.array([r["ratio"] for r in rows])
    ours = np.array([r["edgetune_p50_ms"] for r in rows])
    median_ratio = float(np.median(ratios))
    spread = float((ours.max() - ours.min()) / np.median(ours))
    ok1, ok2 = abs(median_ratio - 1) <= GOAL, spread <= GOAL
    print(f"\nmodel {path}, {args.threads} thread(s), {args.seconds:.1f} s per measurement")
    print(
        f"1. edgetune p50 / plain-loop p50: median {median_ratio:.4f} (pairs {ratios.min():.4f}"
        f"-{ratios.max():.4f}); goal within {GOAL:.0%}: {'MET' if ok1 else 'NOT MET'}"
    )
    print(
        f"2. spread of edgetune p50 over {REPETITIONS} repetitions: {spread:.2%}; goal within "
        f"{GOAL:.0%}: {'MET' if ok2 else 'NOT MET'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "median_ratio": median_ratio,
                    "spread": spread,
                    "ratio_goal_met": ok1,
                    "spread_goal_met": ok2,
                },
                indent=2,
            )
        )


def _demo_model() -> Path:
    from edgetune.demo import asset_path

    return asset_path("model_fp32.onnx")


if __name__ == "__main__":
    main()
