"""End to end: every runtime installed here on a real (tiny) model, with fresh processes,
placement, a sustained run and the divergence check. Slow (LiteRT converts with onnx2tf)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetune.benchmark.bench import BenchConfig, bench
from edgetune.benchmark.diverge import DivergeConfig, diverge
from edgetune.benchmark.latency import LatencyConfig
from edgetune.benchmark.sustained import SustainedConfig
from edgetune.runtimes import check_runtime, get_runtime
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data

pytestmark = pytest.mark.e2e

LATENCY = LatencyConfig(
    warmup=5,
    min_iters=100,
    max_iters=20000,
    min_seconds=0.5,
    max_seconds=2.0,
    stop_percentile=90.0,
    block=10,
    switch_runs=1,
)


def _installed(*names: str, **settings: dict[str, object]) -> tuple[str, ...]:
    return tuple(n for n in names if check_runtime(get_runtime(n, **settings.get(n, {}))) is None)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_every_installed_runtime_on_the_tiny_cnn(cache: Path) -> None:
    calib = cache / "calib.npz"
    np.savez(calib, **tiny_cnn_data(64))
    settings = {"litert-int8": {"calibration": str(calib)}}
    names = _installed("onnxruntime", "openvino", "litert", "litert-int8", **settings)
    config = BenchConfig(
        runtimes=names, latency=LATENCY, cold_repeats=1, sustained=SustainedConfig(seconds=1.0)
    )
    result = bench(tiny_cnn(), config, runtime_settings=settings)
    model = result.to_dict()["models"][0]
    assert [e["runtime"] for e in model["runtimes"]] == list(names)
    for entry in model["runtimes"]:
        name = entry["runtime"]
        assert entry["status"] == "ok", (name, entry.get("reason"))
        assert entry["cold_start"]["fresh_process"]["total_ms"] > 0, name
        assert entry["peak_rss_bytes"] > 0, name
        assert entry["placement"]["counts"]["target"] > 0, name
        assert entry["sustained"]["n"] > 0, name
        assert entry["speedup_vs_baseline"] > 0, name
    assert model["fastest"] in names
    if "litert" in names:
        litert = result.entry("tiny_cnn", "litert")
        assert litert["cold_start"]["offline_ms"]  # conversion reported apart from the cold start
        assert litert["max_abs_diff_vs_baseline"] < 1e-3


def test_divergence_across_runtimes_passes_in_float32(cache: Path) -> None:
    names = _installed("onnxruntime", "openvino", "litert")
    settings = {"openvino": {"precision": "f32"}}
    result = diverge(
        tiny_cnn(),
        DivergeConfig(runtimes=names, metric="fidelity", max_drop=1e-4),
        data=tiny_cnn_data(32),
        runtime_settings=settings,
    )
    rows = {r["runtime"]: r for r in result.to_dict()["rows"]}
    assert set(rows) == set(names) - {"onnxruntime"}
    assert result.passed, rows
    if "openvino" in rows:
        assert rows["openvino"]["layers"]["tensors"]  # per layer where the runtime allows it
    if "litert" in rows:
        assert "layers" not in rows["litert"]  # converted graph: tensors do not map by name


def test_torch_module_in_memory_is_benchmarked_without_a_fresh_process() -> None:
    torch = pytest.importorskip("torch")
    from onnx import numpy_helper

    model = tiny_cnn()
    w = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
        for i in model.proto.graph.initializer
    }

    class Cnn(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.conv2d(x, w["conv.w"], w["conv.b"], padding=1)
            y = torch.nn.functional.batch_norm(
                y, w["bn.mean"], w["bn.var"], w["bn.scale"], w["bn.bias"]
            )
            y = torch.relu(y).mean(dim=(2, 3))
            return y @ w["fc.w"].T + w["fc.b"]

    config = BenchConfig(runtimes=("torch",), latency=LATENCY, cold_repeats=1)
    result = bench(model, config, runtime_settings={"torch": {"module": Cnn()}})
    entry = result.entry("tiny_cnn", "torch")
    assert entry["status"] == "ok" and entry["max_abs_diff_vs_baseline"] < 1e-4
    assert "fresh_process" not in entry["cold_start"]
    assert any("fresh-process" in n for n in entry["notes"])
