"""A runtime that runs nothing: outputs of the right shape filled from the inputs' sums.

For fast unit tests of the plumbing (evaluation loops, reports, the CLI) with no real runtime.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgetune.core.model import Model
from edgetune.runtimes.base import SessionOptions

__all__ = ["NullRuntime"]


class NullSession:
    def __init__(self, model: Model) -> None:
        self._outputs = model.outputs
        self.output_names = [o.name for o in self._outputs]

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        total = float(sum(np.sum(np.asarray(v, dtype=np.float64)) for v in feed.values()))
        results = []
        for spec in self._outputs:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape or (1,))
            results.append(np.full(shape, total, dtype=spec.dtype))
        return results


class NullRuntime:
    name = "null"

    def version(self) -> str:
        return "0"

    def session(self, model: Model, options: SessionOptions | None = None) -> NullSession:
        return NullSession(model)
