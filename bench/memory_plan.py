"""Activation arena plans against the naive sum and the lower bound, on real and built models.

For each model it prints: the naive bytes (every activation its own buffer), the arena of greedy
by size (Pisarchyk & Lee 2020), edgetune's arena (strategy ``best``), the lower bound (peak of
bytes live at one step), and the ratio arena / lower bound. Goals: ratio <= 1.05 on every model,
and never worse than greedy by size. Inputs and outputs are in the arena, buffers aligned to 64
bytes, views share their source's buffer (edgetune's defaults).

Models: the demo's MNIST CNN and teacher (edgetune/assets/demo), all-MiniLM-L6-v2 exported
with pooling (sequence 128; skipped with a message when torch or the model package is missing),
and three graphs built here: a deep residual net, a U-Net with long skips, and a two-layer
attention encoder.

    python bench/memory_plan.py [--json OUT.json] [--skip-minilm] [--seq 128] [--demo-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.analyze.memory import MemoryConfig, Strategy, plan_memory
from edgetune.core.model import Model


class _Builder:
    """A few lines per layer for ONNX graphs of realistic shape (random weights)."""

    def __init__(self, seed: int = 0) -> None:
        from onnx import helper

        self.h = helper
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def weight(self, shape: tuple[int, ...], scale: float = 0.05) -> str:
        from onnx import numpy_helper

        name = self._name("w")
        array = self.rng.normal(0, scale, shape).astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        from onnx import numpy_helper

        name = self._name("k")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self._name(op_type.lower() + "_")
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv_bn_relu(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1,
                     relu: bool = True) -> str:
        y = self.op("Conv", [x, self.weight((cout, cin, k, k)), self.weight((cout,))],
                    pads=[k // 2] * 4, strides=[stride, stride])
        bn = [self.weight((cout,), 0.1) for _ in range(2)]
        y = self.op("BatchNormalization", [y, bn[0], bn[1], self.const(np.zeros(cout), np.float32),
                                           self.const(np.ones(cout), np.float32)])
        return self.op("Relu", [y]) if relu else y

    def linear(self, x: str, din: int, dout: int) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.weight((din, dout))]),
                               self.weight((dout,))])

    def gelu(self, x: str) -> str:
        """0.5 * x * (1 + erf(x / sqrt(2))), as exporters write it."""
        erf = self.op("Erf", [self.op("Div", [x, self.scalar(np.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [erf, self.scalar(1.0)])]),
                               self.scalar(0.5)])

    def scalar(self, value: float) -> str:
        return self.const(np.float32(value), np.float32)

    def layernorm(self, x: str, dim: int) -> str:
        return self.op("LayerNormalization", [x, self.const(np.ones(dim), np.float32),
                                              self.const(np.zeros(dim), np.float32)], axis=-1)

    def model(self, name: str, inputs: list[tuple[str, list[int]]], output: str,
              out_shape: list[int] | None = None) -> Model:
        import onnx
        from onnx import TensorProto

        graph = self.h.make_graph(
            self.nodes, name,
            [self.h.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [self.h.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)], self.inits)
        proto = self.h.make_model(graph, opset_imports=[self.h.make_opsetid("", 17)])
        proto.ir_version = 8
        onnx.checker.check_model(proto)
        return Model(proto=onnx.shape_inference.infer_shapes(proto), name=name)


def resnet(blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 32, size: int = 96) -> Model:
    """A ResNet-34-like stack of basic residual blocks (conv-bn-relu-conv-bn-add-relu)."""
    b = _Builder(1)
    x = b.conv_bn_relu("image", 3, width, k=3, stride=2)
    cin = width
    for stage, count in enumerate(blocks):
        cout = width * 2**stage
        for i in range(count):
            stride = 2 if stage and i == 0 else 1
            y = b.conv_bn_relu(x, cin, cout, stride=stride)
            y = b.conv_bn_relu(y, cout, cout, relu=False)
            same = stride == 1 and cin == cout
            skip = x if same else b.conv_bn_relu(x, cin, cout, 1, stride, False)
            x = b.op("Relu", [b.op("Add", [y, skip])])
            cin = cout
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    x = b.op("Gemm", [x, b.weight((10, cin)), b.weight((10,))], transB=1)
    return b.model("resnet34_like", [("image", [1, 3, size, size])], x, [1, 10])


def unet(depth: int = 4, width: int = 16, size: int = 128) -> Model:
    """A U-Net: each encoder level's output waits for its decoder level (long skips)."""
    b = _Builder(2)
    x, cin, skips = "image", 3, []
    for level in range(depth):
        cout = width * 2**level
        x = b.conv_bn_relu(b.conv_bn_relu(x, cin, cout), cout, cout)
        skips.append((x, cout))
        x, cin = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), cout
    x = b.conv_bn_relu(b.conv_bn_relu(x, cin, cin * 2), cin * 2, cin * 2)
    cin *= 2
    for skip, channels in reversed(skips):
        up = b.op("ConvTranspose", [x, b.weight((cin, channels, 2, 2))], strides=[2, 2])
        x = b.op("Concat", [up, skip], axis=1)
        x = b.conv_bn_relu(b.conv_bn_relu(x, 2 * channels, channels), channels, channels)
        cin = channels
    x = b.op("Conv", [x, b.weight((2, cin, 1, 1)), b.weight((2,))])
    return b.model("unet", [("image", [1, 3, size, size])], x, [1, 2, size, size])


def attention_encoder(layers: int = 2, seq: int = 128, dim: int = 256, heads: int = 4) -> Model:
    """Transformer encoder layers spelled in basic ops: Q/K/V projections, head split, softmax
    attention, output projection, residuals, LayerNorm and a GELU feed-forward."""
    b = _Builder(3)
    x = "tokens"
    split = b.const([1, seq, heads, dim // heads])
    merge = b.const([1, seq, dim])
    scale = b.scalar(np.sqrt(dim // heads))
    for _ in range(layers):
        h = b.layernorm(x, dim)
        q, k, v = (b.op("Transpose", [b.op("Reshape", [b.linear(h, dim, dim), split])],
                        perm=[0, 2, 1, 3]) for _ in range(3))
        kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = b.op("Softmax", [b.op("Div", [b.op("MatMul", [q, kt]), scale])], axis=-1)
        ctx = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [scores, v])], perm=[0, 2, 1, 3]),
                               merge])
        x = b.op("Add", [x, b.linear(ctx, dim, dim)])
        f = b.linear(b.layernorm(x, dim), dim, 4 * dim)
        f = b.gelu(f)
        x = b.op("Add", [x, b.linear(f, 4 * dim, dim)])
    return b.model("attention_encoder", [("tokens", [1, seq, dim])], x, [1, seq, dim])


def resnet_narrow() -> Model:
    """A narrow two-stage ResNet on 32x32 RGB: the input outweighs every activation, the case
    where greedy by size places the input first and leaves a hole."""
    model = resnet(blocks=(1, 1), width=8, size=32)
    return model.with_proto(model.proto, name="resnet_narrow")


BUILT: dict[str, Callable[[], Model]] = {
    "resnet34_like": resnet, "resnet_narrow": resnet_narrow, "unet": unet,
    "attention_encoder": attention_encoder,
}


def _demo_models(folder: Path | None) -> list[tuple[Model, dict[str, int]]]:
    """The bundled demo models, or those in ``folder`` (python scripts/train_demo.py --out)."""
    from edgetune.demo import asset_path
    from edgetune.errors import ModelError
    from edgetune.load import load

    found = []
    for name in ("model_fp32.onnx", "teacher_fp32.onnx"):
        try:
            found.append((load(folder / name if folder else asset_path(name)), {}))
        except ModelError as exc:
            print(f"skipping demo model {name}: {exc}", file=sys.stderr)
    return found


def _minilm(seq: int, folder: Path) -> list[tuple[Model, dict[str, int]]]:
    from edgetune.errors import EdgetuneError
    from edgetune.load import load

    try:
        from edgetune.testing.minilm import export_minilm

        path = export_minilm(folder / "minilm.onnx")
    except (ImportError, EdgetuneError) as exc:
        print(f"skipping all-MiniLM-L6-v2: {exc}", file=sys.stderr)
        return []
    return [(load(path), {"batch": 1, "seq": seq})]


def _row(model: Model, dims: dict[str, int], include_io: bool) -> dict[str, Any]:
    config = MemoryConfig(dims=dims, include_io=include_io)
    start = time.perf_counter()
    plan = plan_memory(model, config)
    seconds = time.perf_counter() - start
    greedy = plan_memory(model, replace(config, strategy=Strategy.GREEDY_BY_SIZE))
    return {"model": model.name, "io": "in" if include_io else "out", "buffers": len(plan.buffers),
            "naive": plan.naive_bytes, "greedy_size": greedy.arena_bytes,
            "arena": plan.arena_bytes, "lower_bound": plan.lower_bound_bytes,
            "ratio": plan.ratio_to_lower_bound, "greedy_ratio": greedy.ratio_to_lower_bound,
            "method": plan.method, "optimal": plan.optimal, "plan_seconds": seconds}


def _synthetic(seeds: range) -> list[dict[str, Any]]:
    """Dense random lifetimes (not from a model): where the stronger strategy earns its keep."""
    import random

    from edgetune.analyze._arena import Item, live_bytes, solve

    rows = []
    for seed in seeds:
        rng = random.Random(seed)
        n, steps = 40 + 20 * (seed % 4), 30
        items = []
        for _ in range(n):
            start = rng.randrange(steps)
            end = min(steps - 1, start + rng.randint(0, 8))
            items.append(Item(64 * rng.randint(1, 40), start, end))
        lower = max(live_bytes(items, steps))
        started = time.perf_counter()
        best = solve(items, steps, "best")
        rows.append({"model": f"synthetic-{seed}", "io": "-", "buffers": n,
                     "naive": sum(i.size for i in items),
                     "greedy_size": solve(items, steps, "greedy-size").arena, "arena": best.arena,
                     "lower_bound": lower, "ratio": best.arena / lower,
                     "greedy_ratio": solve(items, steps, "greedy-size").arena / lower,
                     "method": best.method, "optimal": best.optimal,
                     "plan_seconds": time.perf_counter() - started})
    return rows


def _print(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    head = (f"{'model':<20}{'io':>4}{'buffers':>8}{'naive KiB':>11}{'greedy KiB':>11}"
            f"{'arena KiB':>11}{'bound KiB':>11}{'greedy/LB':>10}{'arena/LB':>9}  {'method':<26}"
            f"{'s':>5}")
    print(head)
    for r in rows:
        method = r["method"] + (" (optimal)" if r["optimal"] else "")
        print(f"{r['model']:<20}{r['io']:>4}{r['buffers']:>8}{r['naive'] / 1024:>11.1f}"
              f"{r['greedy_size'] / 1024:>11.1f}{r['arena'] / 1024:>11.1f}"
              f"{r['lower_bound'] / 1024:>11.1f}{r['greedy_ratio']:>10.3f}{r['ratio']:>9.3f}"
              f"  {method:<26}{r['plan_seconds']:>5.1f}")
    worst = max(r["ratio"] for r in rows)
    never_worse = all(r["arena"] <= r["greedy_size"] for r in rows)
    verdict = "met" if worst <= 1.05 else "MISSED"
    print(f"worst arena / lower bound: {worst:.3f} (goal <= 1.05: {verdict}); never worse than "
          f"greedy by size: {'yes' if never_worse else 'NO'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--seq", type=int, default=128, help="MiniLM sequence length")
    parser.add_argument("--demo-dir", type=Path,
                        help="folder with model_fp32.onnx and teacher_fp32.onnx (default: bundled)")
    args = parser.parse_args()
    models = _demo_models(args.demo_dir) + [(build(), {}) for build in BUILT.values()]
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        if not args.skip_minilm:
            models += _minilm(args.seq, Path(tmp))
        rows = [_row(model, dims, io) for model, dims in models for io in (True, False)]
    _print(rows, "Models (io in: graph inputs and outputs in the arena, as TFLite Micro; "
                 "out: caller-owned, as ONNX Runtime)")
    synthetic = _synthetic(range(8))
    _print(synthetic, "Synthetic dense lifetimes (not models; where greedy by size falls short)")
    if args.json:
        args.json.write_text(json.dumps({"models": rows, "synthetic": synthetic}, indent=2) + "\n",
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
