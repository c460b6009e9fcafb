from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetune.core.model import Model
from edgetune.errors import DataError, ModelError
from edgetune.load import load
from edgetune.report import load_report, new_report, render_html, write_json
from edgetune.testing.tiny import tiny_cnn


def test_load_checks_and_infers_shapes(tmp_path: Path) -> None:
    path = tiny_cnn().save(tmp_path / "m.onnx")
    model = load(path)
    assert [s.describe() for s in model.inputs] == ["input: float32[batch,1,8,8]"]
    assert model.source == path and model.name == "m"


def test_load_refuses_missing_corrupt_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "none.onnx")
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(tiny_cnn().to_bytes()[:50])
    with pytest.raises(ModelError):
        load(truncated)
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(empty, tmp_path / "e.onnx")
    with pytest.raises(ModelError, match="empty graph"):
        load(tmp_path / "e.onnx")


def test_load_refuses_external_data_outside_the_folder(tmp_path: Path) -> None:
    proto = tiny_cnn().copy_proto()
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    path = tmp_path / "sub" / "evil.onnx"
    path.parent.mkdir()
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match="outside the model's folder"):
        load(path)


def test_load_rejects_unknown_objects() -> None:
    with pytest.raises(ModelError, match=r"torch\.nn\.Module"):
        load(42)


def test_models_are_never_mutated_by_save(tmp_path: Path) -> None:
    model = tiny_cnn()
    model.save(tmp_path / "a.onnx")
    assert Model(proto=onnx.load(tmp_path / "a.onnx"), name="a").to_bytes() == model.to_bytes()


def test_report_round_trip_and_allow_list(tmp_path: Path) -> None:
    report = new_report("quantize")
    report["value"] = np.float32(0.5)
    path = write_json(report, tmp_path / "r.json")
    assert load_report(path)["value"] == 0.5
    path.write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(DataError, match="readable"):
        load_report(path)


def test_html_renders_without_optional_sections() -> None:
    assert "<html>" in render_html(new_report("quantize"))


@pytest.mark.torch
def test_load_torch_module() -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    model = load(module, example_inputs=(torch.randn(1, 1, 6, 6),))
    assert model.inputs[0].shape[0] == "batch" and model.outputs[0].name == "output"
    with pytest.raises(ModelError, match="example_inputs"):
        load(module)
