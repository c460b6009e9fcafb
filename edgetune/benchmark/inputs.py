"""The inputs a benchmark runs: real samples from a dataset, batched, or synthetic ones.

Synthetic inputs follow the model's input specs: a symbolic first dimension becomes the batch
size, floats are drawn from a fixed-seed normal distribution, integers are ones (a valid token
id and a full attention mask), so no runtime sees out-of-range indices. Other symbolic
dimensions (a sequence length) must be given, or real data used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.model import Model, TensorSpec
from edgetune.errors import ConfigError, DataError

__all__ = ["bench_feeds", "feed_shapes"]

Feed = dict[str, np.ndarray]
DataSpec = BoundData | Dataset | str | Path | Mapping[str, np.ndarray]


def bench_feeds(
    model: Model,
    *,
    data: DataSpec | None,
    batch: int,
    samples: int,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[Feed]:
    """``samples`` distinct feeds of ``batch`` samples each."""
    if data is not None:
        return _from_data(model, data, batch, samples)
    rng = np.random.default_rng(0)
    shapes = {s.name: _shape(s, batch, input_shapes or {}) for s in model.inputs}
    return [
        {s.name: _synthetic(s, shapes[s.name], rng) for s in model.inputs} for _ in range(samples)
    ]


def feed_shapes(feed: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(d) for d in np.shape(v)) for k, v in feed.items()}


def _shape(spec: TensorSpec, batch: int, given: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    if spec.name in given:
        return tuple(int(d) for d in given[spec.name])
    dims = list(spec.shape or ())
    if spec.shape is None:
        raise _needs_shape(spec)
    shape = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            if i == 0 and batch not in (1, d):
                raise _fixed_batch(batch, [spec.describe()])
            shape.append(d)
        elif i == 0:
            shape.append(batch)
        else:
            raise _needs_shape(spec)
    return tuple(shape)


def _needs_shape(spec: TensorSpec) -> ConfigError:
    return ConfigError(
        f"input {spec.describe()} has symbolic dimensions besides the batch; give real inputs "
        f"with --data DATA.npz or a shape with --shape {spec.name}:1,128"
    )


def _fixed_batch(batch: int, inputs: list[str]) -> ConfigError:
    return ConfigError(
        f"--batch {batch} needs a dynamic batch axis, but {', '.join(inputs)} has a fixed batch; "
        "export the model with a dynamic batch or use --batch 1"
    )


def _synthetic(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    kind = np.dtype(spec.dtype).kind
    if kind == "f":
        return rng.normal(0.0, 1.0, shape).astype(spec.dtype)
    if kind == "b":
        return np.ones(shape, dtype=bool)
    return np.ones(shape, dtype=spec.dtype)


def _from_data(model: Model, data: DataSpec, batch: int, samples: int) -> list[Feed]:
    bound = data if isinstance(data, BoundData) else bind(data, model)
    singles = [s.feed for s in bound.samples(samples * batch)]
    if not singles:
        raise DataError(f"dataset {bound.name!r} has no samples; give it data")
    groups = [singles[i : i + batch] for i in range(0, len(singles), batch)]
    groups = [g for g in groups if len(g) == batch] or [_cycle(singles, batch)]
    return [_stack(group, model, batch) for group in groups]


def _cycle(singles: list[Any], batch: int) -> list[Any]:
    return [singles[i % len(singles)] for i in range(batch)]


def _stack(group: Sequence[Mapping[str, np.ndarray]], model: Model, batch: int) -> Feed:
    if batch == 1:
        return {k: np.asarray(v) for k, v in group[0].items()}
    fixed = [s.describe() for s in model.inputs if s.shape and s.shape[0] == 1]
    if fixed:
        raise _fixed_batch(batch, fixed)
    return {k: np.concatenate([np.asarray(f[k]) for f in group]) for k in group[0]}
