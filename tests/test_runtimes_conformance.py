"""One suite every runtime passes: same outputs as the baseline, names, version, placement.

Runtimes that cannot run here are skipped with the reason their ``check()`` gives (the GPU
providers on a machine without a GPU). LiteRT converts with onnx2tf (seconds per model), so it
is marked e2e.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgetune.core.model import Model
from edgetune.runtimes import (
    OpPlacement,
    PlacementStatus,
    SessionOptions,
    check_runtime,
    get_runtime,
)
from edgetune.runtimes.base import PlacementReporter, Runtime
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_mlp, tiny_mlp_data

_TOLERANCE = 1e-4


def _runtime(name: str, **settings: Any) -> Runtime:
    runtime = get_runtime(name, **settings)
    reason = check_runtime(runtime)
    if reason is not None:
        pytest.skip(f"{name} cannot run here: {reason}")
    return runtime


def _conforms(runtime: Runtime, model: Model, feed: dict[str, np.ndarray]) -> None:
    want = get_runtime("onnxruntime").session(model).run(feed)
    session = runtime.session(
        model, SessionOptions(threads=1, input_shapes={k: v.shape for k, v in feed.items()})
    )
    got = session.run(feed)
    assert session.output_names == [o.name for o in model.outputs]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=_TOLERANCE, atol=_TOLERANCE)
    np.testing.assert_allclose(session.run(feed)[0], got[0])  # a session runs more than once
    assert isinstance(runtime.version(), str) and runtime.version()
    if isinstance(runtime, PlacementReporter):
        ops = runtime.placement(
            model,
            SessionOptions(threads=1, input_shapes={k: v.shape for k, v in feed.items()}),
            feed,
        )
        assert ops and all(isinstance(op, OpPlacement) for op in ops)
        assert all(
            op.status is PlacementStatus.TARGET for op in ops
        )  # tiny models run fully on target


def _cnn_feed() -> dict[str, np.ndarray]:
    return {"input": tiny_cnn_data(2)["input"][:1]}


def _mlp_feed(batch: int = 1) -> dict[str, np.ndarray]:
    return {"x": tiny_mlp_data(batch)["x"]}


_ONNX_RUNTIMES = [
    ("onnxruntime", {}),
    ("openvino", {"precision": "f32"}),
    ("onnxruntime-cuda", {}),
    ("onnxruntime-tensorrt", {}),
]


@pytest.mark.parametrize(("name", "settings"), _ONNX_RUNTIMES)
@pytest.mark.parametrize(("model", "feed"), [(tiny_cnn, _cnn_feed), (tiny_mlp, _mlp_feed)])
def test_onnx_runtimes_conform(name: str, settings: dict[str, Any], model: Any, feed: Any) -> None:
    _conforms(_runtime(name, **settings), model(), feed())


def test_openvino_says_when_it_does_not_run_float32() -> None:
    runtime = _runtime("openvino")
    session = runtime.session(tiny_cnn())
    precision = session.inference_precision  # type: ignore[attr-defined]
    notes = session.notes  # type: ignore[attr-defined]
    assert ("f32" in precision or "float32" in precision) == (not notes)
    if notes:
        assert "--openvino-precision f32" in notes[0]


@pytest.mark.e2e
@pytest.mark.parametrize(("model", "feed"), [(tiny_cnn, _cnn_feed), (tiny_mlp, _mlp_feed)])
def test_litert_conforms(
    model: Any, feed: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    _conforms(_runtime("litert"), model(), feed())


@pytest.mark.e2e
def test_litert_int8_quantizes_with_calibration(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    runtime = _runtime("litert-int8", calibration=tiny_cnn_data(64))
    model, feed = tiny_cnn(), _cnn_feed()
    session = runtime.session(
        model, SessionOptions(threads=1, input_shapes={"input": (1, 1, 8, 8)})
    )
    got, want = session.run(feed)[0], get_runtime("onnxruntime").session(model).run(feed)[0]
    cosine = float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.99  # INT8, so close but not equal
    ops = runtime.placement(
        model, SessionOptions(threads=1, input_shapes={"input": (1, 1, 8, 8)}), feed
    )
    assert any(op.precision == "int8" for op in ops)


class _TinyMlpTorch:
    """The tiny MLP rebuilt in torch from its ONNX initializers ('the model came from torch')."""

    @staticmethod
    def build(model: Model) -> Any:
        import torch
        from onnx import numpy_helper

        w = {
            i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
            for i in model.proto.graph.initializer
        }

        class Mlp(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return torch.relu(x @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]

        return Mlp()


@pytest.mark.torch
def test_torch_runtime_conforms() -> None:
    pytest.importorskip("torch")
    model = tiny_mlp()
    runtime = get_runtime("torch", module=_TinyMlpTorch.build(model))
    assert check_runtime(runtime) is None
    _conforms(runtime, model, _mlp_feed(3))
    assert runtime.settings() is None  # an in-memory module cannot go to a fresh process  # type: ignore[attr-defined]


def test_torch_runtime_without_a_module_says_how_to_give_one() -> None:
    reason = check_runtime(get_runtime("torch"))
    assert reason is not None and "--torch-module" in reason


def test_settings_to_a_runtime_without_settings_is_a_usage_error() -> None:
    from edgetune.errors import ConfigError

    with pytest.raises(ConfigError, match="takes no settings"):
        get_runtime("openvino", module="x:y")


def test_null_runtime_still_works() -> None:
    out = get_runtime("null").session(tiny_mlp()).run(_mlp_feed())
    assert out[0].shape == (1, 4)
