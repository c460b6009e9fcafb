"""The bench verb on tiny models: schema, verdicts, inputs, configuration and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgetune.benchmark.bench import BENCH_SCHEMA, BenchConfig, bench
from edgetune.benchmark.coldstart import fresh_process_cold_start
from edgetune.benchmark.inputs import bench_feeds
from edgetune.benchmark.latency import LatencyConfig
from edgetune.benchmark.sustained import SustainedConfig
from edgetune.errors import ConfigError, MissingExtraError, UnknownNameError
from edgetune.report import load_report, render_html, write_json
from edgetune.runtimes import SessionOptions, get_runtime
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_mlp

FAST = LatencyConfig(
    warmup=2,
    min_iters=30,
    max_iters=2000,
    min_seconds=0.0,
    max_seconds=0.5,
    stop_percentile=90.0,
    block=5,
    switch_runs=1,
)


def _config(**kwargs: object) -> BenchConfig:
    values: dict[str, object] = {"latency": FAST, "cold_repeats": 0}
    values.update(kwargs)
    return BenchConfig(**values)  # type: ignore[arg-type]


def test_bench_against_the_baseline_on_one_schema(tmp_path: Path) -> None:
    result = bench(
        [tiny_cnn(), tiny_mlp()],
        _config(runtimes=("null",), sustained=SustainedConfig(seconds=0.3)),
    )
    d = result.to_dict()
    assert d["schema"] == BENCH_SCHEMA
    assert d["device"]["cores_available"] >= 1 and d["device"]["isa"]
    cnn = d["models"][0]
    assert (
        cnn["model"] == "tiny_cnn"
        and cnn["precision"] == "float32"
        and cnn["baseline"] == "onnxruntime"
    )
    assert [e["runtime"] for e in cnn["runtimes"]] == [
        "onnxruntime",
        "null",
    ]  # baseline added, first
    base = result.entry("tiny_cnn", "onnxruntime")
    assert base["speedup_vs_baseline"] == pytest.approx(1.0)
    assert base["throughput_per_s"] > 0
    assert base["cold_start"]["session_ms"] > 0 and base["cold_start"]["first_run_ms"] > 0
    assert base["placement"]["counts"]["fallback"] == 0
    assert base["placement"]["counts"]["target"] >= 1
    assert base["sustained"]["n"] > 0 and "throttled" in base["sustained"]
    assert sum(base["latency_histogram"]["counts"]) == base["latency_ms"]["n"]
    assert result.fastest("tiny_cnn") in {"onnxruntime", "null"}
    report_path = write_json(result.report(), tmp_path / "r.json")
    assert load_report(report_path)["bench"]["models"][1]["model"] == "tiny_mlp"


def test_report_html_has_the_bench_sections() -> None:
    import edgetune.report.bench  # noqa: F401

    config = _config(runtimes=("onnxruntime",), sustained=SustainedConfig(seconds=0.3))
    html = render_html(bench(tiny_cnn(), config).report())
    for text in (
        "Benchmark",
        "Warm latency percentiles",
        "Latency distribution",
        "Cold start",
        "Operator placement",
        "Sustained run",
        "<svg",
    ):
        assert text in html


def test_slower_runtime_is_said_plainly() -> None:
    class Slow:
        name = "slowpoke"

        def version(self) -> str:
            return "1"

        def session(self, model, options=None):  # type: ignore[no-untyped-def]
            inner = get_runtime("onnxruntime").session(model, options)

            class S:
                output_names = inner.output_names

                def run(self, feed):  # type: ignore[no-untyped-def]
                    inner.run(feed)
                    return inner.run(feed)

            return S()

    result = bench(tiny_cnn(), _config(), runtime=[get_runtime("onnxruntime"), Slow()])
    model = result.to_dict()["models"][0]
    assert model["fastest"] == "onnxruntime"
    assert any("slowpoke is slower than the CPU baseline" in n for n in model["notes"])


def test_unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="onnxruntime, onnxruntime-cuda") as info:
        BenchConfig(runtimes=("tensorflo",))
    assert "openvino" in str(info.value) and "litert" in str(info.value)


def test_runtime_not_installed_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.raises(MissingExtraError, match=r"pip install 'edgetune\[openvino\]'"):
        bench(tiny_cnn(), _config(runtimes=("openvino",)))


def test_automatic_choice_lists_what_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    from edgetune.runtimes import litert

    def missing() -> None:
        raise MissingExtraError("ai-edge-litert", "litert", "the LiteRT runtime")

    monkeypatch.setattr(litert, "_litert", missing)
    result = bench(tiny_mlp(), _config(placement=False))
    entries = {e["runtime"]: e for e in result.to_dict()["models"][0]["runtimes"]}
    assert entries["onnxruntime"]["status"] == "ok"
    assert entries["openvino"]["status"] == "unavailable"
    assert "edgetune[openvino]" in entries["openvino"]["reason"]
    assert "edgetune[litert]" in entries["litert"]["reason"]
    assert entries["torch"]["status"] == "unavailable"  # no module given
    assert "null" not in entries


def test_gpu_runtime_without_gpu_is_a_clear_error() -> None:
    from edgetune.errors import RuntimeBackendError

    with pytest.raises((MissingExtraError, RuntimeBackendError), match=r"gpu|GPU"):
        bench(tiny_cnn(), _config(runtimes=("onnxruntime-cuda",)))


def test_config_round_trips_through_json_and_refuses_unknown_keys() -> None:
    config = _config(
        runtimes=("openvino",),
        threads=2,
        batch=4,
        input_shapes={"x": (4, 16)},
        sustained=SustainedConfig(seconds=5.0),
    )
    assert BenchConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown bench settings"):
        BenchConfig.from_dict({"runtimes": [], "evil": 1})
    with pytest.raises(ConfigError):
        BenchConfig(batch=0)


def test_synthetic_feeds_follow_the_specs() -> None:
    feeds = bench_feeds(tiny_cnn(), data=None, batch=4, samples=3)
    assert len(feeds) == 3 and feeds[0]["input"].shape == (4, 1, 8, 8)
    assert feeds[0]["input"].dtype == np.float32


def test_feeds_from_data_are_batched() -> None:
    feeds = bench_feeds(tiny_cnn(), data=tiny_cnn_data(20), batch=4, samples=3)
    assert [f["input"].shape for f in feeds] == [(4, 1, 8, 8)] * 3
    np.testing.assert_array_equal(feeds[1]["input"], tiny_cnn_data(20)["input"][4:8])


def test_symbolic_sequence_needs_a_shape() -> None:
    from onnx import TensorProto, helper

    from edgetune.core.model import Model

    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", "seq"])],
    )
    model = Model(
        proto=helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), name="ids"
    )
    with pytest.raises(ConfigError, match="--shape ids:1,128"):
        bench_feeds(model, data=None, batch=1, samples=1)
    feeds = bench_feeds(model, data=None, batch=1, samples=1, input_shapes={"ids": (1, 7)})
    assert feeds[0]["ids"].shape == (1, 7) and feeds[0]["ids"].dtype == np.int64


def test_fresh_process_cold_start_reports_its_parts(tmp_path: Path) -> None:
    path = tiny_cnn().save(tmp_path / "cnn.onnx")
    feed = {"input": tiny_cnn_data(1)["input"]}
    fresh = fresh_process_cold_start(
        path, get_runtime("onnxruntime"), SessionOptions(threads=1), feed, repeats=1
    )
    assert fresh is not None
    for key in (
        "import_runtime_ms",
        "parse_model_ms",
        "session_ms",
        "first_run_ms",
        "total_ms",
        "process_wall_ms",
        "peak_rss_bytes",
        "runtime_rss_bytes",
        "warm_p50_ms",
    ):
        assert fresh[key] >= 0, key
    assert fresh["peak_rss_bytes"] > fresh["runtime_rss_bytes"] > 0
    assert fresh["process_wall_ms"] > fresh["total_ms"]
