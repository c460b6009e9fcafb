"""Realistic model updates for the fleet simulation and the delta measurements.

* :func:`retrain_classifier`: the last layer retrained on new data (a few epochs of softmax
  regression on the frozen features), the other tensors untouched; the common field update.
* :func:`scramble_classifier`: the classes of the last layer shifted by one, a label-mapping
  bug. The model loads, runs and is confident, so only the on-device metrics can catch it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.bundle.ota.health import ProbeData
from edgetune.core.model import Model
from edgetune.errors import ModelError

__all__ = [
    "make_releases",
    "measure_deltas",
    "nudge_classifier",
    "retrain_classifier",
    "scramble_classifier",
]


@dataclass(frozen=True)
class _Head:
    """The classifier: its weight and bias initializers and the tensor feeding it."""

    features: str
    weight: str
    bias: str | None
    classes_axis: int


def _head(model: Model) -> _Head:
    graph = model.proto.graph
    output = graph.output[0].name
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}
    node = producers.get(output)
    if node is not None and node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        return _Head(node.input[0], node.input[1], bias, 0 if trans_b else 1)
    if node is not None and node.op_type == "Add":
        matmul = next((producers[i] for i in node.input if i in producers), None)
        bias = next((i for i in node.input if i in inits), None)
        if matmul is not None and matmul.op_type == "MatMul" and matmul.input[1] in inits:
            return _Head(matmul.input[0], matmul.input[1], bias, 1)
    raise ModelError(f"model {model.name!r} does not end in a Gemm or MatMul+Add classifier")


def _arrays(model: Model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}


def _with(model: Model, replaced: dict[str, np.ndarray], name: str) -> Model:
    from onnx import numpy_helper

    proto = model.copy_proto()
    for tensor in proto.graph.initializer:
        if tensor.name in replaced:
            tensor.CopyFrom(numpy_helper.from_array(replaced[tensor.name].astype(np.float32),
                                                    tensor.name))
    return model.with_proto(proto, name=name)


def _features(model: Model, feeds: dict[str, np.ndarray], tensor: str) -> np.ndarray:
    """The classifier's input for every sample, read by exposing it as a graph output."""
    import onnxruntime as ort
    from onnx import helper

    proto = model.copy_proto()
    proto.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([tensor], feeds)[0]).reshape(len(next(iter(feeds.values()))), -1)


def retrain_classifier(model: Model, feeds: dict[str, np.ndarray], labels: np.ndarray, *,
                       epochs: int = 30, lr: float = 0.5, seed: int = 0) -> Model:
    """The model with its last layer fine-tuned on (feeds, labels); nothing else changes."""
    head = _head(model)
    arrays = _arrays(model)
    x = _features(model, feeds, head.features)
    w = arrays[head.weight].astype(np.float64)
    w = w.T if head.classes_axis == 0 else w.copy()
    b = arrays[head.bias].astype(np.float64) if head.bias else np.zeros(w.shape[1])
    rng = np.random.default_rng(seed)
    onehot = np.eye(w.shape[1])[labels.reshape(-1)]
    for _ in range(epochs):
        batch = rng.choice(len(x), size=min(len(x), 256), replace=False)
        logits = x[batch] @ w + b
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - onehot[batch]) / len(batch)
        w -= lr * x[batch].T @ grad
        b -= lr * grad.sum(axis=0)
    replaced = {head.weight: w.T if head.classes_axis == 0 else w}
    if head.bias:
        replaced[head.bias] = b
    return _with(model, replaced, f"{model.name}-retrained")


def nudge_classifier(model: Model, *, scale: float = 1e-3, seed: int = 0) -> Model:
    """The model with its last layer moved slightly (relative noise of ``scale``): an update
    that changes two tensors and no prediction, for models without real labels."""
    head = _head(model)
    arrays = _arrays(model)
    rng = np.random.default_rng(seed)
    names = [head.weight, *([head.bias] if head.bias else [])]
    replaced = {n: arrays[n] * (1 + scale * rng.standard_normal(arrays[n].shape)) for n in names}
    return _with(model, replaced, f"{model.name}-nudged")


def scramble_classifier(model: Model) -> Model:
    """The model with its classes shifted by one: a label-mapping bug."""
    head = _head(model)
    arrays = _arrays(model)
    replaced = {head.weight: np.roll(arrays[head.weight], 1, axis=head.classes_axis)}
    if head.bias:
        replaced[head.bias] = np.roll(arrays[head.bias], 1)
    return _with(model, replaced, f"{model.name}-scrambled")


def predictions(model: Model, feeds: dict[str, np.ndarray]) -> Any:
    """Top-1 class per sample (used to label data for models without labels)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.to_bytes(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0]).argmax(axis=1)


def make_releases(workdir: Path, model: Model, train: ProbeData | None, *,
                  calib: ProbeData | None = None) -> tuple[dict[str, Path], Path, Path]:
    """Sign the simulation's releases; returns (bundles by name, private key, public key).

    v1 factory model; v2 classifier retrained on ``train`` (labelled; without it, nudged);
    v3 v2 with classes shifted (the regression); v4 and v5 retrained again; int8 v1
    requantized on ``calib`` (for the delta measurement only).
    """
    from edgetune.bundle.pack import BundleConfig, create_bundle
    from edgetune.bundle.sign import load_private_key, write_keypair

    key_path, pub_path = write_keypair(workdir / "fleet", overwrite=True)
    key = load_private_key(key_path)
    def update(base: Model, seed: int) -> Model:
        if train is None or train.labels is None:
            return nudge_classifier(base, seed=seed)
        return retrain_classifier(base, train.feeds, train.labels, seed=seed)

    v2 = update(model, 1)
    models = {"v1": model, "v2": v2, "v3": scramble_classifier(v2), "v4": update(v2, 2),
              "v5": update(v2, 3)}
    if calib is not None:
        models["int8"] = _int8(model, calib)
    versions = {"v1": "1.0.0", "v2": "1.1.0", "v3": "1.2.0", "v4": "1.3.0", "v5": "1.4.0",
                "int8": "1.1.1"}
    bundles: dict[str, Path] = {}
    for name, variant in models.items():
        folder = workdir / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        variant.save(folder / "model.onnx")
        bundles[name] = create_bundle(folder / "model.onnx", BundleConfig(
            version=versions[name], name="fleet-model"), key=key,
            output=workdir / f"{name}.etb").path
    return bundles, key_path, pub_path


def _int8(model: Model, calib: ProbeData) -> Model:
    from edgetune.core.data import Dataset
    from edgetune.transforms.calibrate import CalibMethod
    from edgetune.transforms.quantize import quantize
    from edgetune.transforms.settings import QuantizeConfig

    config = QuantizeConfig(method=CalibMethod.MINMAX, calib_limit=128)
    return quantize(model, config, data=Dataset(name="calib", arrays=dict(calib.feeds))).model


def measure_deltas(workdir: Path, bundles: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Delta size against full bundle size for the realistic updates."""
    from edgetune.bundle.delta import diff_bundles, patch_bundle
    from edgetune.bundle.pack import file_sha256

    pairs = {"classifier retrained (v1 -> v2)": ("v1", "v2"),
             "retrained again (v2 -> v4)": ("v2", "v4"),
             "full requantization (v1 -> int8)": ("v1", "int8")}
    found: dict[str, dict[str, Any]] = {}
    for label, (old, new) in pairs.items():
        if old not in bundles or new not in bundles:
            continue
        delta = diff_bundles(bundles[old], bundles[new], output=workdir / f"{old}-{new}.etd")
        rebuilt = patch_bundle(bundles[old], delta.path, output=workdir / f"{old}-{new}.etb")
        found[label] = {**delta.stats,
                        "identical": rebuilt.sha256 == file_sha256(bundles[new])}
    return found
