"""benchmark: every runtime against the CPU baseline, measured side by side, nothing assumed.

* ``edgetune.benchmark.bench.bench`` (:class:`BenchConfig`): cold start, warm latency
  percentiles with confidence intervals, throughput, memory, operator placement, sustained
  runs, speedup against ONNX Runtime on CPU.
* ``edgetune.benchmark.diverge.diverge`` (:class:`DivergeConfig`): do the outputs still agree,
  per runtime, precision and layer.

(The verbs are not re-exported here: their modules share their names, and a package attribute
would be shadowed by the submodule once imported.)
* :func:`measure_interleaved` (:class:`LatencyConfig`): the timing loop everything shares.
* The device agent (``edgetune agent``) and its client live in ``agent`` and ``remote``.

The verbs load on first use, so importing this package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetune.benchmark.latency import LatencyConfig, LatencyStats, measure_interleaved

__all__ = [
    "BenchConfig",
    "BenchResult",
    "DivergeConfig",
    "DivergeResult",
    "LatencyConfig",
    "LatencyStats",
    "SustainedConfig",
    "measure_interleaved",
]

_LAZY = {
    "BenchConfig": "edgetune.benchmark.bench",
    "BenchResult": "edgetune.benchmark.bench",
    "DivergeConfig": "edgetune.benchmark.diverge",
    "DivergeResult": "edgetune.benchmark.diverge",
    "SustainedConfig": "edgetune.benchmark.sustained",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetune.benchmark' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
