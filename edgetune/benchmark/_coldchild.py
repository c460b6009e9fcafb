"""The child process of a fresh-process cold start (see coldstart.py); prints one JSON line.

Reads ``{"model", "runtime", "settings", "threads", "feed", "warm_runs", "input_shapes"}`` from
stdin. Imports are timed one group at a time, so the figures split into: Python's own libraries
(numpy, edgetune), the runtime library, parsing the model, creating the session, the first run.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def _rss_bytes() -> int:
    """Current resident set size from /proc (Linux); 0 where unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process image: VmHWM from /proc (reset by exec).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork and exec into it,
    so a child of a large benchmark process would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    request = json.loads(sys.stdin.read())
    out: dict[str, Any] = {}
    t = time.perf_counter()
    import importlib

    import numpy as np

    from edgetune.benchmark.coldstart import cold_start_in_process
    from edgetune.runtimes import SessionOptions, get_runtime

    out["import_base_ms"] = _since(t)
    model = _parse(request["model"], out)
    out["rss_before_runtime_bytes"] = _rss_bytes()
    runtime = get_runtime(request["runtime"], **request["settings"])
    t = time.perf_counter()
    if getattr(runtime, "library", None):
        importlib.import_module(runtime.library)  # type: ignore[attr-defined]
    out["import_runtime_ms"] = _since(t)
    with np.load(request["feed"], allow_pickle=False) as npz:
        feed = {k: npz[k] for k in npz.files}
    shapes = {k: tuple(v) for k, v in request["input_shapes"].items()} or None
    options = SessionOptions(threads=request["threads"], input_shapes=shapes)
    cold = cold_start_in_process(runtime, model, options, feed)
    out.update(session_ms=cold.session_ms, first_run_ms=cold.first_run_ms, phases_ms=cold.phases_ms)
    out["total_ms"] = out["import_runtime_ms"] + cold.session_ms + cold.first_run_ms
    out["warm_p50_ms"] = _warm(cold.session, feed, int(request["warm_runs"]))
    out["peak_rss_bytes"] = _peak_rss_bytes()
    out["runtime_rss_bytes"] = max(out["peak_rss_bytes"] - out["rss_before_runtime_bytes"], 0)
    print(json.dumps(out), flush=True)
    return 0


def _parse(path: str, out: dict[str, Any]) -> Any:
    """The model as the runtime API takes it; parsing is edgetune's cost, reported apart."""
    from pathlib import Path

    import onnx

    from edgetune.core.model import Model

    t = time.perf_counter()
    raw = Path(path).read_bytes()
    model = Model(
        proto=onnx.load_from_string(raw), name=Path(path).stem, source=Path(path), _bytes=[raw]
    )
    out["parse_model_ms"] = _since(t)
    return model


def _warm(session: Any, feed: dict[str, Any], runs: int) -> float:
    times = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        session.run(feed)
        times.append(_since(t))
    return sorted(times)[len(times) // 2]


def _since(t: float) -> float:
    return (time.perf_counter() - t) * 1e3


if __name__ == "__main__":
    sys.exit(main())
