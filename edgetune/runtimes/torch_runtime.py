"""PyTorch eager on CPU: the module the ONNX model was exported from, as a point of comparison.

An ONNX file does not carry its PyTorch module, so this runtime is given one: ``module=`` is a
``torch.nn.Module`` or the text ``"package.module:factory"`` naming a function that returns one
(the form a fresh process and the CLI's ``--torch-module`` use). The module's ``forward`` takes
the ONNX model's inputs positionally, in graph order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import ConfigError, MissingExtraError, RuntimeBackendError
from edgetune.runtimes.base import SessionOptions

__all__ = ["TorchRuntime", "TorchSession"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingExtraError("torch", "torch", "the PyTorch runtime") from None
    return torch


class TorchSession:
    def __init__(self, module: Any, model: Model, load_phases_ms: dict[str, float]) -> None:
        self._module = module
        self._model_name = model.name
        self._input_names = [i.name for i in model.inputs]
        self.output_names = [o.name for o in model.outputs]
        self.load_phases_ms = load_phases_ms

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = _torch()
        args = [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in self._input_names]
        try:
            with torch.inference_mode():
                result = self._module(*args)
        except Exception as exc:  # any error raised by user module code
            raise RuntimeBackendError(
                f"the PyTorch module for {self._model_name!r} raised {type(exc).__name__}: "
                f"{str(exc)[:200]}; check its forward() takes {self._input_names} in that order"
            ) from None
        return [t.detach().numpy() for t in _tensors(result)]


def _tensors(result: Any) -> list[Any]:
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in _tensors(item)]
    if isinstance(result, Mapping):
        return [t for item in result.values() for t in _tensors(item)]
    return [result]


class TorchRuntime:
    """PyTorch eager mode, ``torch.inference_mode()``, intra-op threads from the options."""

    name = "torch"
    library = "torch"
    """The Python module a fresh process imports to use this runtime."""

    def __init__(self, *, module: Any = None) -> None:
        self.module = module

    def version(self) -> str:
        """From the package metadata: importing torch only to print its version costs seconds."""
        from importlib import metadata

        try:
            return metadata.version("torch")
        except metadata.PackageNotFoundError:
            raise MissingExtraError("torch", "torch", "the PyTorch runtime") from None

    def settings(self) -> dict[str, Any] | None:
        return {"module": self.module} if isinstance(self.module, str) else None

    def check(self) -> None:
        self.version()
        if self.module is None:
            raise ConfigError(
                "the torch runtime runs the PyTorch module the ONNX model came from; give it "
                "with --torch-module package.module:factory (or module=... in Python)"
            )

    def session(self, model: Model, options: SessionOptions | None = None) -> TorchSession:
        self.check()
        torch = _torch()
        options = options or SessionOptions()
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        start = time.perf_counter()
        module = self._build()
        module.eval()
        return TorchSession(module, model, {"build_module": (time.perf_counter() - start) * 1e3})

    def _build(self) -> Any:
        if not isinstance(self.module, str):
            return self.module
        from edgetune.core.data import resolve_callable

        factory = resolve_callable(self.module, "torch module factory")
        module = factory()
        if not hasattr(module, "eval") or not callable(module):
            raise ConfigError(
                f"--torch-module {self.module!r} returned a {type(module).__name__}; it must "
                "return a torch.nn.Module"
            )
        return module
