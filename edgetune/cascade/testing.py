"""A tiny cascade built in code, for fast tests and examples (no files, no downloads).

The large model is :func:`edgetune.testing.tiny.tiny_mlp`; the small one is the same network
with noise added to its weights, so it agrees with the large model most of the time and is
less sure where they disagree, as a real distilled or quantized small model is. Labels are the
large model's answers with a share flipped at random, so neither model is perfect.
"""

from __future__ import annotations

import numpy as np

from edgetune.core.model import Model
from edgetune.testing.tiny import tiny_mlp

__all__ = ["FEATURES", "tiny_pair", "tiny_pair_data"]

FEATURES, CLASSES = 16, 4


def _perturbed(model: Model, scale: float, seed: int) -> Model:
    from onnx import numpy_helper

    proto = model.copy_proto()
    rng = np.random.default_rng(seed)
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        noisy = (array + rng.normal(0.0, scale, array.shape)).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    return model.with_proto(proto, name="tiny_small")


def tiny_pair(noise: float = 0.08, seed: int = 0) -> tuple[Model, Model]:
    """(small, large): two MLPs on ``x: float32[batch, 16]`` scoring 4 classes."""
    large = tiny_mlp(seed=seed, features=FEATURES, hidden=32, classes=CLASSES)
    large = large.with_proto(large.proto, name="tiny_large")
    return _perturbed(large, noise, seed + 1), large


def tiny_pair_data(
    large: Model,
    n: int = 1500,
    *,
    seed: int = 5,
    flip: float = 0.05,
    shift: float = 0.0,
    scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Inputs and labels (the large model's answers, ``flip`` of them changed at random);
    ``shift`` and ``scale`` move the inputs away from the calibration distribution."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    x = (rng.normal(shift, scale, (n, FEATURES))).astype(np.float32)
    session = ort.InferenceSession(large.to_bytes(), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": x})[0].argmax(axis=1)
    flipped = rng.random(n) < flip
    labels[flipped] = rng.integers(0, CLASSES, int(flipped.sum()))
    return {"x": x, "labels": labels.astype(np.int64)}
