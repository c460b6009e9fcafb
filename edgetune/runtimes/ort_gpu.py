"""ONNX Runtime's GPU execution providers: CUDA and TensorRT, with CPU as ORT's fallback.

These rows exist so a benchmark on a GPU machine compares them against the CPU baseline with
the same code. ``check()`` tells the two ways they cannot run apart: the installed onnxruntime
is the CPU build (install the ``gpu`` extra, which provides ``onnxruntime-gpu``; uninstall
``onnxruntime`` first, the two packages overwrite each other), or the build has the provider
but this machine has no NVIDIA GPU. A session whose provider ORT silently dropped is refused,
so a "GPU" number is never a CPU number in disguise. Placement comes from ORT's profiler;
nodes ORT keeps on the CPU for shape arithmetic are reported as ``cpu_by_design``.
"""

from __future__ import annotations

from pathlib import Path

from edgetune.errors import MissingExtraError, RuntimeBackendError
from edgetune.runtimes.onnxruntime import OnnxRuntimeCPU, _ort

__all__ = ["OrtCuda", "OrtTensorRT"]

_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version")


def gpu_present() -> bool:
    """An NVIDIA driver is loaded on this machine (device nodes or the driver's proc entry)."""
    return any(Path(p).exists() for p in _GPU_DEVICE_FILES)


class _OrtGpu(OnnxRuntimeCPU):
    def check(self) -> None:
        ort = _ort()
        if self.provider not in ort.get_available_providers():
            raise MissingExtraError(
                "onnxruntime-gpu",
                "gpu",
                f"{self.name} ({self.provider} is not in this onnxruntime {ort.__version__} build)",
            )
        if not gpu_present():
            raise RuntimeBackendError(
                f"{self.name} needs an NVIDIA GPU, and none was found "
                f"({', '.join(_GPU_DEVICE_FILES)}"
                " are missing); run on a machine with a GPU and its driver, or drop this runtime"
            )


class OrtCuda(_OrtGpu):
    """ONNX Runtime with the CUDA execution provider."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"


class OrtTensorRT(_OrtGpu):
    """ONNX Runtime with the TensorRT execution provider (the engine build is part of session
    creation, so cold start includes it)."""

    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"

    def providers(self) -> list[str]:
        """TensorRT first, CUDA for what TensorRT rejects, CPU last (ORT's recommended order)."""
        return [self.provider, OrtCuda.provider, "CPUExecutionProvider"]
