"""bench: every runtime against the CPU baseline, on one schema, with nothing assumed.

For each model and runtime: cold start split into parts (in this process and in a fresh one),
warm latency percentiles with confidence intervals and an honest stopping rule, throughput,
peak resident memory, model size, where each operator ran, optionally a sustained run with
throttling detection, and the speedup against ONNX Runtime on CPU. Warm latencies of all the
runtimes of one model are measured interleaved, so their ratios hold on a busy machine.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.coldstart import ColdStart, cold_start_in_process, fresh_process_cold_start
from edgetune.benchmark.device import device_facts
from edgetune.benchmark.inputs import DataSpec, bench_feeds, feed_shapes
from edgetune.benchmark.latency import LatencyConfig, LatencyStats, measure_interleaved
from edgetune.benchmark.summary import model_notes, placement_summary, rank_runtimes
from edgetune.benchmark.sustained import SustainedConfig, run_sustained
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import ConfigError, EdgetuneError, RuntimeBackendError
from edgetune.load import load
from edgetune.report.schema import new_report
from edgetune.runtimes import BASELINE, EXTRAS, Runtime, SessionOptions, get_runtime, runtime_names
from edgetune.runtimes.base import Checkable, PlacementReporter

__all__ = ["BENCH_SCHEMA", "BenchConfig", "BenchResult", "bench"]

log = logging.getLogger(__name__)

BENCH_SCHEMA = "edgetune.bench/1"
ModelSpec = Model | str | Path
_NOT_AUTO = {"null"}


def _default_latency() -> LatencyConfig:
    return LatencyConfig(
        warmup=20,
        min_iters=200,
        max_iters=20000,
        min_seconds=3.0,
        max_seconds=30.0,
        stop_percentile=90.0,
        block=10,
        switch_runs=1,
    )


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to measure. ``runtimes`` empty: every runtime that can run here (the baseline,
    ONNX Runtime on CPU, is always added)."""

    runtimes: tuple[str, ...] = ()
    threads: int | None = None
    batch: int = 1
    samples: int = 16
    """Distinct inputs cycled through while timing."""
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    latency: LatencyConfig = field(default_factory=_default_latency)
    cold_repeats: int = 3
    """Fresh-process cold starts per runtime (their median is reported); 0 skips them and the
    per-runtime peak memory that comes with them."""
    placement: bool = True
    sustained: SustainedConfig | None = None

    def __post_init__(self) -> None:
        if self.batch < 1 or self.samples < 1 or self.cold_repeats < 0:
            raise ConfigError(
                "bench needs batch >= 1, samples >= 1 and cold_repeats >= 0; got "
                f"batch={self.batch}, "
                f"samples={self.samples}, cold_repeats={self.cold_repeats}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(
                f"threads must be >= 1 (or None for the runtime's default); got {self.threads}"
            )
        for name in self.runtimes:
            if name not in runtime_names():
                get_runtime(name)  # raises UnknownNameError listing the known ones

    def session_options(self, shapes: Mapping[str, tuple[int, ...]]) -> SessionOptions:
        return SessionOptions(threads=self.threads, input_shapes=dict(shapes))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["runtimes"] = list(self.runtimes)
        data["input_shapes"] = {k: list(v) for k, v in (self.input_shapes or {}).items()} or None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchConfig:
        """Rebuild from :meth:`to_dict` output, accepting only known keys."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown bench settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        values["runtimes"] = tuple(values.get("runtimes") or ())
        values["latency"] = _sub(LatencyConfig, values.get("latency"))
        values["sustained"] = (
            _sub(SustainedConfig, values.get("sustained")) if values.get("sustained") else None
        )
        shapes = values.get("input_shapes")
        values["input_shapes"] = {k: tuple(v) for k, v in shapes.items()} if shapes else None
        return cls(**values)


def _sub(cls: Any, data: Mapping[str, Any] | None) -> Any:
    if data is None:
        return cls() if cls is not LatencyConfig else _default_latency()
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings {sorted(unknown)}")
    return cls(**data)


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    models: list[dict[str, Any]]
    device: dict[str, Any]
    config: BenchConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": BENCH_SCHEMA,
            "config": self.config.to_dict(),
            "device": self.device,
            "models": self.models,
        }

    def report(self) -> dict[str, Any]:
        """A full edgetune report (kind 'bench') holding this result under ``bench``."""
        report = new_report("bench")
        report["bench"] = self.to_dict()
        return report

    def entry(self, model: str, runtime: str) -> dict[str, Any]:
        for m in self.models:
            for r in m["runtimes"]:
                if m["model"] == model and r["runtime"] == runtime:
                    return r
        raise KeyError(f"no result for model {model!r} on runtime {runtime!r}")

    def fastest(self, model: str) -> str | None:
        return next((m["fastest"] for m in self.models if m["model"] == model), None)


def bench(
    models: ModelSpec | Sequence[ModelSpec],
    config: BenchConfig | None = None,
    *,
    data: DataSpec | None = None,
    runtime: Runtime | Sequence[Runtime] | None = None,
    runtime_settings: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> BenchResult:
    """Benchmark each model on each runtime.

    Runtimes: the ``runtime`` instances if given, else those named in ``config.runtimes``
    (either way, one that cannot run here raises, naming the extra to install), else every
    runtime that can run here (the others are listed as unavailable, with the reason).
    ``runtime_settings`` maps a runtime name to its constructor settings (``{"torch":
    {"module": "pkg.mod:factory"}, "litert-int8": {"calibration": "calib.npz"}}``).
    """
    config = config or BenchConfig()
    specs = [models] if isinstance(models, (Model, str, Path)) else list(models)
    runtimes = _runtimes(config, runtime, runtime_settings or {})
    prepared = [_prepare(load(spec), runtimes, config, data, progress) for spec in specs]
    _measure_groups(prepared, config, progress)
    results = [_finish(p, runtimes, config, progress) for p in prepared]
    return BenchResult(models=model_notes(results), device=device_facts(), config=config)


def _runtimes(
    config: BenchConfig,
    given: Runtime | Sequence[Runtime] | None,
    settings: Mapping[str, Mapping[str, Any]],
) -> list[tuple[Runtime, str | None]]:
    """(runtime, reason it cannot run or None), the baseline first."""
    chosen = [given] if isinstance(given, Runtime) else list(given or [])
    if not chosen:
        chosen = [get_runtime(n, **settings.get(n, {})) for n in config.runtimes]
    auto = not chosen
    if auto:
        chosen = [
            get_runtime(n, **settings.get(n, {})) for n in runtime_names() if n not in _NOT_AUTO
        ]
    if BASELINE not in {r.name for r in chosen}:
        chosen.insert(0, get_runtime(BASELINE))
    chosen.sort(key=lambda r: r.name != BASELINE)
    return [(r, _availability(r, raise_errors=not auto)) for r in chosen]


def _availability(runtime: Runtime, *, raise_errors: bool) -> str | None:
    if not isinstance(runtime, Checkable):
        return None
    try:
        runtime.check()
    except EdgetuneError as exc:
        if raise_errors:
            raise
        return str(exc)
    return None


@dataclass(kw_only=True)
class _Prepared:
    """One model's inputs, per-runtime entries and live sessions, between the phases."""

    model: Model
    feeds: list[dict[str, np.ndarray]]
    options: SessionOptions
    entries: dict[str, dict[str, Any]]
    colds: dict[str, ColdStart]
    latency: dict[str, LatencyStats] = field(default_factory=dict)

    def signature(self) -> tuple[Any, ...]:
        return tuple(sorted((k, v.shape, str(v.dtype)) for k, v in self.feeds[0].items()))


def _prepare(
    model: Model,
    runtimes: list[tuple[Runtime, str | None]],
    config: BenchConfig,
    data: DataSpec | None,
    progress: Progress,
) -> _Prepared:
    feeds = bench_feeds(
        model,
        data=data,
        batch=config.batch,
        samples=config.samples,
        input_shapes=config.input_shapes,
    )
    options = config.session_options(feed_shapes(feeds[0]))
    entries = {rt.name: _entry(rt, reason) for rt, reason in runtimes}
    usable = [rt for rt, reason in runtimes if reason is None]
    colds = _cold_starts(model, usable, options, feeds, entries, progress)
    return _Prepared(model=model, feeds=feeds, options=options, entries=entries, colds=colds)


def _measure_groups(prepared: list[_Prepared], config: BenchConfig, progress: Progress) -> None:
    """Warm latency of every session of every model with the same inputs, interleaved in one
    loop, so runtime-vs-runtime and INT8-vs-float32 ratios share the machine's noise."""
    groups: dict[tuple[Any, ...], list[_Prepared]] = {}
    for p in prepared:
        groups.setdefault(p.signature(), []).append(p)
    for group in groups.values():
        sessions = {
            (i, name): c.session for i, p in enumerate(group) for name, c in p.colds.items()
        }
        if not sessions:
            continue
        keyed = {f"{i}/{name}": s for (i, name), s in sessions.items()}
        stats = measure_interleaved(keyed, group[0].feeds, config.latency, progress=progress)
        for i, name in sessions:
            group[i].latency[name] = stats[f"{i}/{name}"]


def _finish(
    p: _Prepared,
    runtimes: list[tuple[Runtime, str | None]],
    config: BenchConfig,
    progress: Progress,
) -> dict[str, Any]:
    model = p.model
    with _model_file(model) as path:
        for rt, _ in runtimes:
            if rt.name in p.colds:
                _measure_rest(rt, p, path, config, progress)
    _agreement(p.colds, p.feeds[0], p.entries)
    return {
        "model": model.name,
        "path": str(model.source) if model.source else None,
        "size_bytes": _file_size(model),
        "sha256": hashlib.sha256(model.to_bytes()).hexdigest(),
        "precision": _precision(model),
        "inputs": {k: list(v) for k, v in feed_shapes(p.feeds[0]).items()},
        "batch": config.batch,
        "baseline": BASELINE,
        **rank_runtimes(list(p.entries.values())),
    }


def _entry(runtime: Runtime, reason: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "runtime": runtime.name,
        "extra": EXTRAS.get(runtime.name),
        "notes": [],
    }
    entry["status"] = "unavailable" if reason else "ok"
    if reason:
        entry["reason"] = reason
    return entry


def _cold_starts(
    model: Model,
    runtimes: list[Runtime],
    options: SessionOptions,
    feeds: list[dict[str, np.ndarray]],
    entries: dict[str, dict[str, Any]],
    progress: Progress,
) -> dict[str, ColdStart]:
    colds: dict[str, ColdStart] = {}
    progress.start(f"loading {model.name}", len(runtimes))
    for rt in runtimes:
        entry = entries[rt.name]
        try:
            entry["version"] = rt.version()
            colds[rt.name] = cold_start_in_process(rt, model, options, feeds[0])
        except RuntimeBackendError as exc:
            log.warning("%s on %s: %s", rt.name, model.name, exc)
            entry.update(status="error", reason=str(exc))
        progress.advance()
    progress.finish()
    return colds


def _measure_rest(
    rt: Runtime, p: _Prepared, path: Path, config: BenchConfig, progress: Progress
) -> None:
    """Everything after the interleaved loop, for one runtime: placement, fresh-process cold
    start and memory, sustained run."""
    cold, latency, entry, feed = (
        p.colds[rt.name],
        p.latency[rt.name],
        p.entries[rt.name],
        p.feeds[0],
    )
    entry["cold_start"] = cold.to_dict()
    entry["notes"] += list(getattr(cold.session, "notes", []) or [])
    entry["latency_ms"] = latency.to_dict()
    entry["latency_histogram"] = histogram(latency.samples_ms)
    entry["throughput_per_s"] = config.batch * 1e3 / latency.mean
    if config.placement and isinstance(rt, PlacementReporter):
        entry["placement"] = _placement(rt, p.model, p.options, feed)
    fresh = _fresh(path, rt, p.options, feed, config.cold_repeats, entry)
    if fresh:
        entry["cold_start"]["fresh_process"] = fresh
        entry["peak_rss_bytes"] = fresh.get("peak_rss_bytes")
    if config.sustained is not None:
        progress.start(f"sustained {rt.name}", None)
        result = run_sustained(cold.session, p.feeds, config.sustained)
        entry["sustained"] = result.to_dict(burst_p50=latency.p50)
        progress.finish()


def histogram(samples_ms: Sequence[float], bins: int = 40) -> dict[str, list[float]]:
    """Log-spaced histogram of latencies (the distribution plot of the HTML report)."""
    data = np.asarray(samples_ms, dtype=np.float64)
    low, high = max(float(data.min()), 1e-6), max(float(data.max()), 1e-6)
    edges = (
        np.geomspace(low, high * 1.0001, bins + 1) if high > low else np.array([low, low * 1.01])
    )
    counts, _ = np.histogram(data, bins=edges)
    return {"edges_ms": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _placement(
    rt: PlacementReporter, model: Model, options: SessionOptions, feed: dict[str, np.ndarray]
) -> dict[str, Any]:
    try:
        return placement_summary(rt.placement(model, options, feed))
    except EdgetuneError as exc:
        return {"error": str(exc)}


def _fresh(
    path: Path,
    rt: Runtime,
    options: SessionOptions,
    feed: dict[str, np.ndarray],
    repeats: int,
    entry: dict[str, Any],
) -> dict[str, Any] | None:
    try:
        fresh = fresh_process_cold_start(path, rt, options, feed, repeats=repeats)
    except RuntimeBackendError as exc:
        entry["notes"].append(str(exc))
        return None
    if fresh is None and repeats:
        entry["notes"].append(
            f"{rt.name}: no fresh-process cold start (its settings cannot be "
            "passed to another process, e.g. an in-memory torch module)"
        )
    return fresh


def _agreement(
    colds: Mapping[str, ColdStart], feed: dict[str, np.ndarray], entries: dict[str, dict[str, Any]]
) -> None:
    """Max |difference| of the first output against the baseline on the first input: a cheap
    sanity check (``edgetune diverge`` does the full comparison)."""
    if BASELINE not in colds:
        return
    want = np.asarray(colds[BASELINE].session.run(feed)[0], dtype=np.float64)
    for name, cold in colds.items():
        got = np.asarray(cold.session.run(feed)[0], dtype=np.float64)
        if got.shape == want.shape:
            diff = float(np.max(np.abs(got - want))) if got.size else 0.0
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            entries[name]["max_abs_diff_vs_baseline"] = diff
            entries[name]["rel_diff_vs_baseline"] = diff / scale if scale > 0 else None


class _model_file:
    """The model's exact bytes in a temp file for child processes (not its source file, which a
    transformed model shares with its parent, and whose bytes differ from the checked graph)."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self._tmp = tempfile.TemporaryDirectory(prefix="edgetune-bench-")

    def __enter__(self) -> Path:
        return self._model.save(Path(self._tmp.name) / f"{self._model.name}.onnx")

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


def _file_size(model: Model) -> int:
    """The file's size when the model is that file (same name), else the serialized size."""
    source = model.source
    if source is not None and source.is_file() and source.stem == model.name:
        return source.stat().st_size
    return model.size_bytes


_INT8_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "MatMulNBits",
    "QGemm",
}


def _precision(model: Model) -> str:
    return "int8" if _INT8_OPS & set(model.op_types()) else "float32"
