"""Cascade benchmark: small model, large model and the certified cascade, side by side.

Two real tasks, each split so that the *test* split is never seen by the cascade build:

* ``demo``: MNIST digits. Small = the bundled demo CNN quantized to INT8 by edgetune; large =
  the bundled larger float32 model (``teacher_fp32.onnx``). The gate is fitted on
  ``calib.npz`` (500 labeled samples, also used for INT8 calibration), certified on the first
  1000 samples of ``eval.npz``, and tested on the last 500.
* ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, shipped in the
  scikit-learn wheel). Small = an MLP with one hidden layer of 32 (2.4k parameters); large = a
  three-layer CNN (93k parameters); both trained here in PyTorch with a fixed seed on 600 samples and exported
  to ONNX. Of the other 1,197 samples, 300 fit the gate, 600 certify it and 297 test it.

For each task it prints, on the test split: accuracy, escalation rate, mean and p99 latency
of one request (ONNX Runtime CPU, one thread each, the three measured interleaved), and
whether the promised bound held. Run: ``python bench/cascade.py [--task demo|digits|all]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.cascade import (
    CascadeConfig,
    CascadeRunner,
    GateMetric,
    Target,
    TargetNotMetError,
    build_cascade,
)
from edgetune.cascade.build import fit_gate, split_outputs
from edgetune.cascade.calibration import confidence_scores
from edgetune.cascade.threshold import clopper_pearson_upper
from edgetune.core.data import bind
from edgetune.load import load
from edgetune.runtimes import SessionOptions, get_runtime

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    description: str
    small: Path
    large: Path
    certify: Arrays
    fit: Arrays | None
    test: Arrays
    split: str


def _take(arrays: Arrays, index: Any) -> Arrays:
    return {k: v[index] for k, v in arrays.items()}


def demo_task(workdir: Path, demo_dir: Path | None = None) -> Task:
    """The bundled demo, or the same files in ``demo_dir`` (e.g. from ``edgetune demo --out``)."""
    from edgetune.demo import asset_path
    from edgetune.transforms.quantize import quantize

    def path(name: str) -> Path:
        return demo_dir / name if demo_dir is not None else asset_path(name)

    small = demo_dir / "model_int8.onnx" if demo_dir is not None else None
    if small is None or not small.exists():
        small = workdir / "demo_small_int8.onnx"
        quantize(path("model_fp32.onnx"), data=path("calib.npz")).model.save(small)
    with np.load(path("eval.npz")) as npz:
        evaluation = {k: npz[k] for k in npz.files}
    with np.load(path("calib.npz")) as npz:
        calib = {k: npz[k] for k in npz.files}
    fit = calib if "labels" in calib else None
    return Task(
        name="demo",
        description="MNIST: INT8 demo CNN (small) vs float32 teacher_fp32.onnx (large)",
        small=small,
        large=path("teacher_fp32.onnx"),
        certify=_take(evaluation, slice(0, 1000)),
        fit=fit,
        test=_take(evaluation, slice(1000, None)),
        split="fit: calib.npz (500); certify: eval.npz[:1000]; test: eval.npz[1000:]"
        if fit is not None
        else "fit+certify: eval.npz[:1000] (40/60 random split); test: eval.npz[1000:]",
    )


def _train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> Any:
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = torch.randperm(len(yt))
        for start in range(0, len(yt), 32):
            batch = order[start : start + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
    return model.eval()


def _digits_models(seed: int) -> tuple[Any, Any]:
    """Small: an MLP with one hidden layer of 32 (2.4k parameters); large: a 3-layer CNN (93k)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    torch.manual_seed(seed + 1)
    large = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip
    return small, large


def digits_task(workdir: Path) -> Task:
    import torch
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, fit, certify, test = np.split(order, [600, 900, 1500])
    paths = {"small": workdir / "digits_small.onnx", "large": workdir / "digits_large.onnx"}
    settings = {"small": (30, 1e-2, 10), "large": (80, 2e-3, 20)}  # epochs, lr, seed
    for name, module in zip(("small", "large"), _digits_models(0), strict=True):
        epochs, lr, seed = settings[name]
        torch.manual_seed(seed)
        _train(module, x[train], y[train], epochs, lr)
        example = (torch.from_numpy(x[:1]),)
        load(module, example_inputs=example, opset=18).save(paths[name])
    data = {"input": x, "labels": y}
    return Task(
        name="digits",
        description="scikit-learn load_digits: 2.4k-parameter MLP (small) vs 93k-parameter CNN (large)",
        small=paths["small"],
        large=paths["large"],
        certify=_take(data, certify),
        fit=_take(data, fit),
        test=_take(data, test),
        split="train 600 / fit 300 / certify 600 / test 297 (seeded permutation)",
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(task: Task, runner: CascadeRunner, passes: int) -> dict[str, dict[str, float]]:
    """Accuracy, escalation and per-request latency of the three, interleaved on test."""
    rt, options = get_runtime("onnxruntime"), SessionOptions(threads=1)
    small, large = rt.session(load(task.small), options), rt.session(load(task.large), options)
    name = load(task.small).inputs[0].name
    systems: dict[str, Callable[[Arrays], Any]] = {
        "small": lambda feed: small.run(feed)[0],
        "large": lambda feed: large.run(feed)[0],
        "cascade": runner.predict,
    }
    times: dict[str, list[float]] = {k: [] for k in systems}
    answers: dict[str, list[int]] = {k: [] for k in systems}
    escalated: list[bool] = []
    labels = task.test["labels"]
    for system in systems.values():  # warm-up, both cascade paths included
        for i in range(min(50, len(labels))):
            system({name: task.test[name][i : i + 1]})
    for p in range(passes):
        for i in range(len(labels)):
            feed = {name: task.test[name][i : i + 1]}
            for k in range(3):
                key = list(systems)[(i + k + p) % 3]
                start = time.perf_counter_ns()
                out = systems[key](feed)
                times[key].append((time.perf_counter_ns() - start) / 1e6)
                if p == 0:
                    answers[key].append(_prediction(out))
                    if key == "cascade":
                        escalated.append(bool(out.escalated[0]))
    return _summaries(times, answers, escalated, labels)


def _prediction(out: Any) -> int:
    array = out.output if hasattr(out, "output") else out
    return int(np.asarray(array).reshape(-1).argmax())


def _summaries(
    times: dict[str, list[float]],
    answers: dict[str, list[int]],
    escalated: list[bool],
    labels: np.ndarray,
) -> dict[str, dict[str, float]]:
    rows = {}
    for key in times:
        rows[key] = {
            "accuracy": float(np.mean(np.array(answers[key]) == labels)),
            "escalation": {"small": 0.0, "large": 1.0}.get(key, float(np.mean(escalated))),
            "mean_ms": float(np.mean(times[key])),
            "p99_ms": _percentile(times[key], 99),
        }
    correct = {k: np.array(v) == labels for k, v in answers.items()}
    harm = (~np.array(escalated)) & ~correct["small"] & correct["large"]
    rows["test_harm"] = {"count": float(harm.sum()), "n": float(len(labels))}
    return rows


def run_task(
    task: Task, target: Target, confidence: float, out_dir: Path, passes: int, resplits: int
) -> bool:
    config = CascadeConfig(target=target, confidence=confidence)
    result = build_cascade(task.small, task.large, config, data=task.certify, fit_data=task.fit)
    cascade_dir = result.save(out_dir / f"{task.name}-cascade", overwrite=True)
    runner = CascadeRunner(cascade_dir, options=SessionOptions(threads=1))
    rows = measure(task, runner, passes)
    ok = _print_task(task, result, rows, target, cascade_dir)
    if resplits:
        _print_resplits(resample(task, config, resplits), target, resplits)
    return ok


def _pool(task: Task) -> tuple[Arrays, tuple[int, int]]:
    """Every held-out sample of the task, and the sizes of its fit and certify splits."""
    parts = [p for p in (task.fit, task.certify, task.test) if p is not None]
    pool = {k: np.concatenate([p[k] for p in parts]) for k in task.test}
    n_fit = (
        len(task.fit["labels"]) if task.fit is not None else int(0.4 * len(task.certify["labels"]))
    )
    n_cert = len(task.certify["labels"]) - (0 if task.fit is not None else n_fit)
    return pool, (n_fit, n_cert)


def resample(task: Task, config: CascadeConfig, resplits: int) -> dict[str, list[float]]:
    """Rebuild the gate on many random fit/certify/test re-splits of the held-out samples
    (models run once); record what each gate does on its own test split."""
    rt = get_runtime("onnxruntime")
    sessions = (rt.session(load(task.small)), rt.session(load(task.large)))
    pool, (n_fit, n_cert) = _pool(task)
    outputs = split_outputs(sessions, bind(pool, load(task.small)), GateMetric.TOP1)
    rng = np.random.default_rng(1)
    record: dict[str, list[float]] = {"harm": [], "escalation": [], "gap": [], "unmet": []}
    for _ in range(resplits):
        order = rng.permutation(len(outputs.labels))
        fit_idx, cert_idx, test_idx = np.split(order, [n_fit, n_fit + n_cert])
        try:
            fitted = fit_gate(outputs.subset(fit_idx), outputs.subset(cert_idx), config)
        except TargetNotMetError:
            record["unmet"].append(1.0)
            continue
        _record(record, outputs.subset(test_idx), fitted)
    return record


def _record(record: dict[str, list[float]], test: Any, fitted: Any) -> None:
    gate = fitted.gate
    scores = confidence_scores(test.logits, gate.score, gate.temperature)
    escalated = scores < gate.threshold
    cascade = np.where(escalated, test.large_correct, test.small_correct)
    record["harm"].append(float(np.mean(~escalated & ~test.small_correct & test.large_correct)))
    record["escalation"].append(float(escalated.mean()))
    record["gap"].append(100 * float(test.large_correct.mean() - cascade.mean()))


def _print_resplits(record: dict[str, list[float]], target: Target, resplits: int) -> None:
    harm, esc, gap = (np.array(record[k]) for k in ("harm", "escalation", "gap"))
    print(f"re-splits: the gate rebuilt on {resplits} random fit/certify/test re-splits of the "
          f"held-out samples ({len(record['unmet'])} could not certify the target):")  # fmt: skip
    if not len(harm):
        return
    print(f"  escalation: mean {esc.mean():.1%}, 90th percentile {np.percentile(esc, 90):.1%}; "
          f"accuracy gap to large: mean {gap.mean():+.2f} points, 90th pct "
          f"{np.percentile(gap, 90):+.2f}")  # fmt: skip
    if target.max_drop is not None:
        held = float(np.mean(harm <= target.max_drop))
        print(f"  test harm <= {target.max_drop:g} in {held:.1%} of re-splits (mean test harm "
              f"{harm.mean():.4f}; a test split of this size misses even a true rate just "
              "under the bound part of the time)")  # fmt: skip


def _print_task(task: Task, result: Any, rows: dict[str, Any], target: Target, where: Path) -> bool:
    spec = result.spec
    print(f"\n== {task.name}: {task.description}")
    print(f"split: {task.split}")
    print(f"cascade: {where}  gate {spec.gate.score.value}, T={spec.gate.temperature:.3f}, "
          f"escalate below {spec.gate.threshold:.6g}")  # fmt: skip
    print(f"guarantee: {spec.guarantee['statement']}")
    print(f"certified bounds at the chosen threshold: {spec.guarantee['bounds']}")
    print(f"{'test split':12}{'top1':>9}{'escalated':>11}{'mean ms':>10}{'p99 ms':>10}")
    for key in ("small", "large", "cascade"):
        r = rows[key]
        print(f"{key:12}{r['accuracy']:>9.4f}{r['escalation']:>10.1%}{r['mean_ms']:>10.4f}"
              f"{r['p99_ms']:>10.4f}")  # fmt: skip
    return _print_goals(rows, target)


def _print_goals(rows: dict[str, Any], target: Target) -> bool:
    gap = 100 * (rows["large"]["accuracy"] - rows["cascade"]["accuracy"])
    esc = rows["cascade"]["escalation"]
    harm, n = int(rows["test_harm"]["count"]), int(rows["test_harm"]["n"])
    checks = [
        (f"accuracy within 0.5 points of large: {gap:+.2f} points below", gap <= 0.5),
        (f"escalation at most 30%: {esc:.1%}", esc <= 0.30),
    ]
    if target.max_drop is not None:
        upper = clopper_pearson_upper(harm, n, 0.95)
        checks.append((
            f"promised harm <= {target.max_drop:g}: test harm {harm}/{n} = {harm / n:.4f} "
            f"(95% upper bound on this split {upper:.4f})",
            harm / n <= target.max_drop,
        ))  # fmt: skip
    print("goals on the test split (never seen by the build):")
    for text, ok in checks:
        print(f"  {'OK  ' if ok else 'MISS'} {text}")
    return all(ok for _, ok in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["demo", "digits", "all"], default="all")
    parser.add_argument("--max-drop", type=float, default=0.005, help="certified harm bound")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--passes", type=int, default=3, help="latency passes over test")
    parser.add_argument("--out", type=Path, default=None, help="keep cascades here")
    parser.add_argument("--demo-dir", type=Path, help="demo files from `edgetune demo --out`")
    parser.add_argument("--resplits", type=int, default=200, help="0 to skip the re-split check")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="edgetune-cascade-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    tasks = {"demo": lambda w: demo_task(w, args.demo_dir), "digits": digits_task}
    names = list(tasks) if args.task == "all" else [args.task]
    ok = True
    for name in names:
        target = Target(max_drop=args.max_drop)
        ok &= run_task(tasks[name](out), target, args.confidence, out, args.passes, args.resplits)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
