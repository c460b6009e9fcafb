"""Does it fit: budgets, the roofline by hand, device files, and the two commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgetune.analyze.devices import device_names, get_device, load_devices
from edgetune.analyze.fit import FitConfig, fit, fit_many
from edgetune.analyze.memory import load_plan
from edgetune.cli import cli
from edgetune.core.model import Model
from edgetune.errors import ConfigError, UnknownNameError
from edgetune.testing.tiny import tiny_cnn, tiny_mlp

_CATALOGUE = {"stm32f4", "stm32f7", "esp32-s3", "esp32-s3-psram", "rpi4", "rpi5",
              "jetson-orin-nano", "coral-edgetpu", "phone-midrange", "phone-flagship"}


def big_cnn() -> Model:
    """Conv 3->16 on a 1x3x96x96 image: 576 KiB activations per tensor, far over an MCU."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, .1, (16, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, .1, (16, 16, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c2"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 96, 96])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 16, 1, 1])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto=onnx.shape_inference.infer_shapes(proto), name="big_cnn")


def test_public_names_resolve_to_what_they_say() -> None:
    import inspect as stdlib_inspect

    import edgetune.analyze as analyze

    for name in analyze.__all__:
        assert not stdlib_inspect.ismodule(getattr(analyze, name)), name


def test_catalogue_has_every_tier_with_sources() -> None:
    assert set(device_names()) == _CATALOGUE
    for name in _CATALOGUE:
        device = get_device(name)
        assert device.sources and device.usable_ram_bytes > 0 and device.compute_ops_per_s
    assert get_device("cortex-m7").name == "stm32f7"


def test_a_model_that_fits() -> None:
    model = tiny_cnn()
    result = fit(model, FitConfig(device="stm32f4"))
    device = result.device
    weights = sum(int(np.prod(i.dims)) * 4 for i in model.proto.graph.initializer)
    assert result.fits and not result.problems and not result.suggestions
    assert result.storage.need_bytes == weights + device.runtime_storage_bytes
    assert result.ram.need_bytes == result.memory.arena_bytes + device.runtime_ram_bytes
    assert result.latency_s is not None and result.energy_j == pytest.approx(
        result.latency_s * device.power_w)


def test_a_model_that_does_not_fit_says_by_how_much_and_what_would_help() -> None:
    result = fit(big_cnn(), FitConfig(device="stm32f4"))
    assert not result.fits and result.storage.fits and not result.ram.fits
    assert result.ram.over_bytes == result.ram.need_bytes - result.device.usable_ram_bytes > 0
    assert any(p.startswith("RAM: needs") for p in result.problems)
    by_change = {s.change.split(" (")[0]: s for s in result.suggestions}
    half = by_change["half the input size"]
    assert half.exact and half.ram_bytes < result.ram.need_bytes
    int8 = by_change["INT8 weights and activations"]
    assert int8.ram_bytes < result.ram.need_bytes and not int8.exact
    assert result.peak["node"] in ("conv2", "relu", "conv")


def test_int8_only_accelerator_refuses_float_layers() -> None:
    result = fit(tiny_cnn(), FitConfig(device="coral-edgetpu"))
    assert not result.fits and not result.precisions_ok and result.latency_s is None
    assert any(p.startswith("precision:") for p in result.problems)
    static = [s for s in result.suggestions if "static" in s.change]
    weight_only = [s for s in result.suggestions if "weight-only" in s.change]
    assert static[0].fits and not any(s.fits for s in weight_only)


def _device_file(tmp_path: Path, **overrides: Any) -> Path:
    device = {"name": "toy", "title": "a toy chip", "class": "mcu", "ram_bytes": 1 << 20,
              "storage_bytes": 1 << 20, "storage_kind": "flash", "weights_in_ram": False,
              "compute_ops_per_s": {"fp32": 1e9}, "memory_bandwidth_bytes_per_s": 1e9,
              "power_w": 0.5, "efficiency": {"compute": 1.0, "bandwidth": 1.0}, **overrides}
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({"schema": "edgetune.devices/1", "devices": [device]}))
    return path


def test_roofline_matches_a_hand_count(tmp_path: Path) -> None:
    """tiny_mlp (batch 1) on 1 GFLOP/s and 1 GB/s at full efficiency, layer by layer:
    fc1 MatMul 2*16*32 ops, reads x 64 B + w1 2048 B, writes 128 B; the Adds and Relu read and
    write 128 B (+128 B bias) with 32 ops; fc2 MatMul 2*32*4 ops, 128 + 512 + 16 B."""
    result = fit(tiny_mlp(), FitConfig(device="toy", devices_file=_device_file(tmp_path)))
    rows = [(2 * 16 * 32, 64 + 2048 + 128), (32, 128 + 128 + 128), (32, 128 + 128),
            (2 * 32 * 4, 128 + 512 + 16), (4, 16 + 16 + 16)]
    expected = sum(max(ops / 1e9, moved / 1e9) for ops, moved in rows)
    assert result.latency_s == pytest.approx(expected)
    assert result.bound == "bandwidth" and result.compute_bound_share == 0.0
    assert result.layers[0].name == "fc1" and result.total_ops == sum(r[0] for r in rows)


def test_device_files_are_validated(tmp_path: Path) -> None:
    assert set(load_devices(_device_file(tmp_path))) == {"toy"}
    assert get_device("toy", _device_file(tmp_path)).title == "a toy chip"
    with pytest.raises(ConfigError, match=r"field 'ram_bytes' of device 'toy'.*got -5"):
        load_devices(_device_file(tmp_path, ram_bytes=-5))
    with pytest.raises(ConfigError, match=r"compute_ops_per_s.fp64"):
        load_devices(_device_file(tmp_path, compute_ops_per_s={"fp64": 1e9}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "devices/0", "devices": []}))
    with pytest.raises(ConfigError, match="not a devices file"):
        load_devices(bad)
    with pytest.raises(UnknownNameError, match="rpi5"):
        get_device("rpi6")


def test_fit_on_every_device_plans_once() -> None:
    results = fit_many(tiny_cnn(), FitConfig(device="all"))
    assert {r.device.name for r in results} == _CATALOGUE
    assert len({id(r.memory) for r in results}) == 1


# -- the commands ------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"small": tmp_path / "small.onnx", "big": tmp_path / "big.onnx"}
    tiny_cnn().save(paths["small"])
    big_cnn().save(paths["big"])
    return paths


def test_fit_command_answers_and_strict_fails(files: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["fit", str(files["small"]), "--device", "stm32f4"])
    assert ok.exit_code == 0, ok.output
    assert "FITS" in ok.output and "assumptions" in ok.output
    html = tmp_path / "fit.html"
    bad = runner.invoke(cli, ["fit", str(files["big"]), "--device", "stm32f4", "--strict",
                              "--html", str(html)])
    assert bad.exit_code == 1
    assert "DOES NOT FIT" in bad.output and "does not fit stm32f4" in bad.output
    assert "Device fit" in html.read_text()
    as_json = runner.invoke(cli, ["fit", str(files["big"]), "--device", "all", "--json"])
    assert as_json.exit_code == 0
    assert {r["device"] for r in json.loads(as_json.output)["fit"]} == _CATALOGUE
    usage = runner.invoke(cli, ["fit", str(files["small"]), "--device", "rpi4", "--dim", "seq"])
    assert usage.exit_code == 2


def test_inspect_command_writes_plan_report_and_html(files: dict[str, Path],
                                                     tmp_path: Path) -> None:
    runner = CliRunner()
    plan, html = tmp_path / "plan.json", tmp_path / "inspect.html"
    result = runner.invoke(cli, ["inspect", str(files["small"]), "--runs", "2", "--plan", str(plan),
                                 "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "arena / lower bound" in result.output and "Fusions" in result.output
    assert load_plan(plan)["arena_bytes"] > 0
    assert "Activation memory" in html.read_text() and "<svg" in html.read_text()
    data = runner.invoke(cli, ["inspect", str(files["small"]), "--runtime", "null", "--json"])
    assert data.exit_code == 0
    report = json.loads(data.output)
    assert report["kind"] == "inspect" and report["fusions"]["counts"]["unknown"] == 1
    unknown = runner.invoke(cli, ["inspect", str(files["small"]), "--runtime", "tvm"])
    assert unknown.exit_code == 2 and "choose one of" in unknown.output


@pytest.mark.e2e
def test_demo_model_on_every_device() -> None:
    from edgetune.demo import asset_path
    from edgetune.errors import ModelError

    try:
        path = asset_path("model_fp32.onnx")
    except ModelError:
        pytest.skip("demo assets are not built")
    results = {r.device.name: r for r in fit_many(path, FitConfig(device="all"))}
    assert results["rpi4"].fits and results["rpi4"].latency_s
    assert not results["coral-edgetpu"].fits


def test_a_qdq_model_is_costed_as_integer_kernels() -> None:
    from test_memory_plan import _qdq_conv

    result = fit(_qdq_conv(), FitConfig(device="coral-edgetpu"))
    assert result.precisions_ok and result.fits
    conv = next(c for c in result.layers if c.name == "conv")
    # reads xq (3x16x16 int8) and wq (4x3x3x3 int8), writes cq (4x16x16 int8)
    assert conv.precision == "int8" and conv.bytes == 768 + 108 + 1024
    assert not any(c.name in ("dq_in", "q_out") for c in result.layers)  # absorbed by the kernel
