"""Cold start, split into its parts, in this process and in a fresh one; peak resident memory.

In-process: the session creation time (with the runtime's own phases: read, convert, compile)
and the first inference, measured in the benchmark process where the runtime library is
already imported. A fresh process is what a user's app meets: Python starts, imports the
runtime, parses the model, creates the session and runs once; the child reports each part and
its peak resident set size (``ru_maxrss``) after some warm runs, which is also the memory
figure, free of every other runtime the benchmark process has loaded.

Ahead-of-time work (LiteRT's ONNX -> TFLite conversion) is reported apart as ``offline_ms``
and never counted in the cold start: an app ships the converted file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import RuntimeBackendError
from edgetune.runtimes.base import Runtime, Session, SessionOptions

__all__ = ["ColdStart", "cold_start_in_process", "fresh_process_cold_start"]

Feed = Mapping[str, np.ndarray]
CHILD_TIMEOUT_S = 600.0
WARM_RUNS_IN_CHILD = 20


@dataclass(frozen=True, kw_only=True)
class ColdStart:
    session: Session
    session_ms: float
    """Session creation, ahead-of-time phases excluded."""
    phases_ms: dict[str, float]
    offline_ms: dict[str, float]
    first_run_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_ms": self.session_ms,
            "phases_ms": self.phases_ms,
            "offline_ms": self.offline_ms,
            "first_run_ms": self.first_run_ms,
            "total_ms": self.session_ms + self.first_run_ms,
        }


def cold_start_in_process(
    runtime: Runtime, model: Model, options: SessionOptions, feed: Feed
) -> ColdStart:
    start = time.perf_counter()
    session = runtime.session(model, options)
    created = time.perf_counter()
    session.run(feed)
    first = time.perf_counter()
    offline = dict(getattr(session, "offline_phases_ms", {}) or {})
    session_ms = (created - start) * 1e3 - sum(offline.values())
    return ColdStart(
        session=session,
        session_ms=max(session_ms, 0.0),
        phases_ms=dict(getattr(session, "load_phases_ms", {}) or {}),
        offline_ms=offline,
        first_run_ms=(first - created) * 1e3,
    )


def fresh_process_cold_start(
    model_path: Path,
    runtime: Runtime,
    options: SessionOptions,
    feed: Feed,
    *,
    repeats: int = 3,
) -> dict[str, Any] | None:
    """Median of ``repeats`` fresh-process cold starts; None when the runtime cannot be
    re-created in another process (an in-memory torch module)."""
    settings = getattr(runtime, "settings", lambda: None)()
    if settings is None or settings.get("_unserializable") or repeats < 1:
        return None
    with tempfile.TemporaryDirectory(prefix="edgetune-cold-") as tmp:
        feed_path = Path(tmp) / "feed.npz"
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in feed.items()}
        np.savez(feed_path, **arrays)
        request = {
            "model": str(model_path),
            "runtime": runtime.name,
            "settings": settings,
            "threads": options.threads,
            "feed": str(feed_path),
            "warm_runs": WARM_RUNS_IN_CHILD,
            "input_shapes": {k: list(v) for k, v in (options.input_shapes or {}).items()},
        }
        runs = [_child(request) for _ in range(repeats)]
    summary = {
        key: float(np.median([r[key] for r in runs])) for key in runs[0] if key != "phases_ms"
    }
    summary["repeats"] = repeats
    summary["phases_ms"] = runs[0].get("phases_ms", {})
    return summary


def _child(request: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "edgetune.benchmark._coldchild"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
        env=_env(),
    )
    wall = (time.perf_counter() - start) * 1e3
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise RuntimeBackendError(
            f"fresh-process cold start of {request['runtime']} on {request['model']!r} failed: "
            f"{tail}; run the benchmark with --cold-repeats 0 to skip it"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_wall_ms"] = wall
    return result


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env
