"""edgetune: take a trained model to an edge device — quantize, validate, benchmark, ship.

The public API is one verb per capability, each returning a result object::

    import edgetune
    model = edgetune.load("model.onnx")
    q = edgetune.quantize(model, edgetune.QuantizeConfig(target_isa=edgetune.Isa.AVX2), data="calib.npz")
    r = edgetune.evaluate(q.model, edgetune.EvaluateConfig(metric="top1"), data="eval.npz")

Heavy modules load on first use, so ``import edgetune`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetune._version import __version__

__all__ = [
    "BenchConfig",
    "BundleConfig",
    "CascadeConfig",
    "CalibMethod",
    "DivergeConfig",
    "FitConfig",
    "InspectConfig",
    "EvaluateConfig",
    "EvaluateResult",
    "Isa",
    "JobConfig",
    "Model",
    "QuantMode",
    "QuantizeConfig",
    "QuantizeResult",
    "__version__",
    "bench",
    "build_cascade",
    "create_bundle",
    "diverge",
    "errors",
    "evaluate",
    "fit",
    "inspect",
    "load",
    "quantize",
    "plan_memory",
    "quantize_and_report",
    "run_demo",
    "verify_bundle",
]

_LAZY = {
    "BenchConfig": "edgetune.benchmark.bench",
    "BundleConfig": "edgetune.bundle.pack",
    "CascadeConfig": "edgetune.cascade.config",
    "build_cascade": "edgetune.cascade.build",
    "DivergeConfig": "edgetune.benchmark.diverge",
    "FitConfig": "edgetune.analyze.fit",
    "InspectConfig": "edgetune.analyze.silicon",
    "bench": "edgetune.benchmark.bench",
    "create_bundle": "edgetune.bundle.pack",
    "diverge": "edgetune.benchmark.diverge",
    "fit": "edgetune.analyze.fit",
    "inspect": "edgetune.analyze.silicon",
    "plan_memory": "edgetune.analyze.memory",
    "verify_bundle": "edgetune.bundle.pack",
    "CalibMethod": "edgetune.transforms.calibrate",
    "EvaluateConfig": "edgetune.validate.evaluate",
    "EvaluateResult": "edgetune.validate.evaluate",
    "Isa": "edgetune.core.isa",
    "JobConfig": "edgetune.pipeline",
    "Model": "edgetune.core.model",
    "QuantMode": "edgetune.transforms.settings",
    "QuantizeConfig": "edgetune.transforms.settings",
    "QuantizeResult": "edgetune.transforms.quantize",
    "errors": "edgetune.errors",
    "evaluate": "edgetune.validate.evaluate",
    "load": "edgetune.load",
    "quantize": "edgetune.transforms.quantize",
    "quantize_and_report": "edgetune.pipeline",
    "run_demo": "edgetune.demo",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'edgetune' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if name == "errors" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
