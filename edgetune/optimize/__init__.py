"""optimize: per-layer sensitivity analysis and automatic mixed precision under a budget.

``analyze(model, config, *, data, eval_data)`` ranks every quantizable layer; ``optimize(model,
config, *, data, eval_data)`` returns the smallest or fastest verified model within a metric
drop. Modules load on first use.

The package itself is callable (``edgetune.optimize(...)`` is ``optimize``), because the verb
and the package share the name ``edgetune.optimize``: whichever Python binds to that attribute
first, a call still reaches the verb.
"""

from __future__ import annotations

from edgetune.core.lazy import lazy_getattr, make_callable

__all__ = [
    "AnalyzeConfig",
    "AnalyzeResult",
    "Objective",
    "OptimizeConfig",
    "OptimizeResult",
    "Plan",
    "RankingCheck",
    "RankingConfig",
    "analyze",
    "load_plan",
    "optimize",
    "ranking_check",
    "verify_plan",
]

_LAZY = {
    "AnalyzeConfig": "edgetune.optimize.config",
    "Objective": "edgetune.optimize.config",
    "OptimizeConfig": "edgetune.optimize.config",
    "AnalyzeResult": "edgetune.optimize.analysis",
    "analyze": "edgetune.optimize.analysis",
    "OptimizeResult": "edgetune.optimize.result",
    "optimize": "edgetune.optimize.search",
    "verify_plan": "edgetune.optimize.search",
    "RankingCheck": "edgetune.optimize.ranking",
    "RankingConfig": "edgetune.optimize.ranking",
    "ranking_check": "edgetune.optimize.ranking",
    "Plan": "edgetune.transforms.plan",
    "load_plan": "edgetune.transforms.plan",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


# the verb of the same name (see make_callable)
make_callable(__name__, "edgetune.optimize.search:optimize")
