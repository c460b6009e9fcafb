"""Where operators ran, and the GPU rows' checks, tested without a GPU (synthetic profiles)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgetune.errors import MissingExtraError, RuntimeBackendError
from edgetune.runtimes import PlacementStatus, get_runtime, ort_gpu
from edgetune.runtimes.litert import _permuted, delegate_placement
from edgetune.runtimes.onnxruntime import _placements

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _event(
    node: str, op: str, provider: str, outputs: list[dict[str, list[int]]]
) -> dict[str, Any]:
    return {
        "cat": "Node",
        "name": f"{node}_kernel_time",
        "args": {
            "op_name": op,
            "provider": provider,
            "output_type_shape": outputs,
            "input_type_shape": [{"float": [1, 3]}],
        },
    }


def test_ort_profile_tells_shape_ops_on_cpu_from_fallbacks() -> None:
    events = [
        _event("conv", "Conv", CUDA, [{"float": [1, 8, 4, 4]}]),
        _event("shape", "Shape", CPU, [{"int64": [4]}]),
        _event("gather_dims", "Gather", CPU, [{"int64": [1]}]),  # shape arithmetic
        _event("custom", "GridSample", CPU, [{"float": [1, 8, 4, 4]}]),  # unsupported on CUDA
        _event("q", "QuantizeLinear", CPU, [{"uint8": [1, 8, 4, 4]}]),  # an activation, not a shape
        _event("big_int", "ArgMax", CPU, [{"int64": [1, 4096]}]),  # too large to be a shape
        _event("copy", "MemcpyToHost", CUDA, [{"float": [1, 8]}]),
        {"cat": "Session", "name": "model_run", "args": {}},
        _event("conv", "Conv", CUDA, [{"float": [1, 8, 4, 4]}]),  # second run of the same node
    ]
    status = {p.node: p.status for p in _placements(events, CUDA)}
    assert status == {
        "conv": PlacementStatus.TARGET,
        "shape": PlacementStatus.CPU_BY_DESIGN,
        "gather_dims": PlacementStatus.CPU_BY_DESIGN,
        "custom": PlacementStatus.FALLBACK,
        "q": PlacementStatus.FALLBACK,
        "big_int": PlacementStatus.FALLBACK,
    }


def test_ort_cpu_places_everything_on_target() -> None:
    from edgetune.runtimes.base import SessionOptions
    from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data

    ops = get_runtime("onnxruntime").placement(
        tiny_cnn(), SessionOptions(), {"input": tiny_cnn_data(1)["input"]}
    )
    assert {op.device for op in ops} == {CPU}
    assert {op.op_type for op in ops} >= {"Conv", "GlobalAveragePool"}


def _op(index: int, name: str, inputs: list[int], outputs: list[int]) -> dict[str, Any]:
    return {
        "index": index,
        "op_name": name,
        "inputs": np.array(inputs),
        "outputs": np.array(outputs),
        "operand_types": [np.float32],
    }


def test_litert_delegate_partitions_map_back_to_operators() -> None:
    # input 0 -> CONV(1) -> CUSTOM(2, not delegated) -> FC(3) -> output 4; XNNPACK took CONV and FC.
    ops = [
        _op(0, "CONV_2D", [0, 10, 11], [1]),
        _op(1, "MY_CUSTOM_OP", [1], [2]),
        _op(2, "FULLY_CONNECTED", [2, 12, 13], [4]),
        _op(3, "DELEGATE", [0, 10, 11], [1]),
        _op(4, "DELEGATE", [2, 12, 13], [4]),
    ]
    placed = {p.op_type: p for p in delegate_placement(ops)}
    assert (
        placed["CONV_2D"].status is PlacementStatus.TARGET and placed["CONV_2D"].device == "XNNPACK"
    )
    assert placed["FULLY_CONNECTED"].status is PlacementStatus.TARGET
    assert placed["MY_CUSTOM_OP"].status is PlacementStatus.FALLBACK
    assert placed["MY_CUSTOM_OP"].device == "TFLite CPU kernels"


@pytest.mark.parametrize(
    ("converted", "onnx_shape", "want"),
    [
        ((1, 8, 8, 3), (1, 3, 8, 8), True),
        ((1, 3, 8, 8), (1, 3, 8, 8), False),
        ((1, 4), ("batch", 4), False),
        ((2, 28, 28, 1), ("batch", 1, 28, 28), True),
        ((1, 128), (1, 128), False),
    ],
)
def test_litert_layout_detection(
    converted: tuple[int, ...], onnx_shape: tuple[Any, ...], want: bool
) -> None:
    assert _permuted(converted, onnx_shape) is want


def _fake_ort(providers: list[str]) -> Any:
    return SimpleNamespace(__version__="9.9", get_available_providers=lambda: providers)


def test_gpu_row_on_a_cpu_build_names_the_gpu_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_gpu, "_ort", lambda: _fake_ort([CPU]))
    with pytest.raises(MissingExtraError, match=r"onnxruntime-gpu.*edgetune\[gpu\]"):
        get_runtime("onnxruntime-cuda").check()  # type: ignore[attr-defined]


def test_gpu_row_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        ort_gpu, "_ort", lambda: _fake_ort(["TensorrtExecutionProvider", CUDA, CPU])
    )
    monkeypatch.setattr(ort_gpu, "gpu_present", lambda: False)
    with pytest.raises(RuntimeBackendError, match="needs an NVIDIA GPU"):
        get_runtime("onnxruntime-tensorrt").check()  # type: ignore[attr-defined]


def test_gpu_rows_ask_ort_for_the_provider_then_cpu() -> None:
    assert get_runtime("onnxruntime-cuda").providers() == [CUDA, CPU]  # type: ignore[attr-defined]
    assert get_runtime("onnxruntime-tensorrt").providers()[0] == "TensorrtExecutionProvider"  # type: ignore[attr-defined]
