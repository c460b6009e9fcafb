"""edgetune: take a trained model to an edge device — quantize, validate, benchmark, ship.

The public API is one verb per capability, each returning a result object::

    import edgetune
    model = edgetune.load("model.onnx")
    q = edgetune.quantize(model, edgetune.QuantizeConfig(target_isa=edgetune.Isa.AVX2), data="calib.npz")
    r = edgetune.evaluate(q.model, edgetune.EvaluateConfig(metric="top1"), data="eval.npz")

Heavy modules load on first use, so ``import edgetune`` stays light.
"""

from __future__ import annotations

from edgetune._version import __version__
from edgetune.core.lazy import lazy_getattr

__all__ = [
    "AnalyzeConfig",
    "AnalyzeResult",
    "BenchConfig",
    "BundleConfig",
    "CalibMethod",
    "CascadeConfig",
    "DivergeConfig",
    "EvaluateConfig",
    "EvaluateResult",
    "FitConfig",
    "InspectConfig",
    "Isa",
    "JobConfig",
    "Model",
    "Objective",
    "OptimizeConfig",
    "OptimizeResult",
    "Plan",
    "QuantMode",
    "QuantizeConfig",
    "QuantizeResult",
    "__version__",
    "analyze",
    "apply_plan",
    "bench",
    "build_cascade",
    "create_bundle",
    "diverge",
    "errors",
    "evaluate",
    "fit",
    "inspect",
    "load",
    "load_plan",
    "optimize",
    "plan_memory",
    "quantize",
    "quantize_and_report",
    "run_demo",
    "verify_bundle",
]

_LAZY = {
    "AnalyzeConfig": "edgetune.optimize.config",
    "AnalyzeResult": "edgetune.optimize.analysis",
    "Objective": "edgetune.optimize.config",
    "OptimizeConfig": "edgetune.optimize.config",
    "OptimizeResult": "edgetune.optimize.result",
    "Plan": "edgetune.transforms.plan",
    "analyze": "edgetune.analyze",
    "apply_plan": "edgetune.transforms.plan",
    "load_plan": "edgetune.transforms.plan",
    "optimize": "edgetune.optimize",
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


# errors is a module; analyze and optimize are packages that are also callable verbs
__getattr__ = lazy_getattr(
    __name__, _LAZY, globals(), modules=frozenset({"errors", "analyze", "optimize"})
)


def __dir__() -> list[str]:
    return sorted(__all__)
