"""analyze: what the model costs on silicon (activation memory, fusions, layout, device fit).

Calling the package, ``edgetune.analyze(model, config, data=..., eval_data=...)``, runs the
per-layer sensitivity analysis of :mod:`edgetune.optimize.analysis`.
Modules load on first use, so importing this package stays light. The fit verb lives at
``edgetune.analyze.fit.fit`` (``fit_many`` is exported here): a package attribute named like
its submodule would be replaced by the module as soon as the module is imported.
"""

from __future__ import annotations

from edgetune.core.lazy import lazy_getattr, make_callable

__all__ = [
    "Device",
    "FitConfig",
    "FitResult",
    "InspectConfig",
    "InspectResult",
    "MemoryConfig",
    "MemoryPlan",
    "Strategy",
    "fit_many",
    "get_device",
    "inspect",
    "load_devices",
    "plan_memory",
]

_LAZY = {
    "Device": "edgetune.analyze.devices",
    "FitConfig": "edgetune.analyze.fit",
    "FitResult": "edgetune.analyze.fit",
    "InspectConfig": "edgetune.analyze.silicon",
    "InspectResult": "edgetune.analyze.silicon",
    "MemoryConfig": "edgetune.analyze.memory",
    "MemoryPlan": "edgetune.analyze.memory",
    "Strategy": "edgetune.analyze.memory",
    "fit_many": "edgetune.analyze.fit",
    "get_device": "edgetune.analyze.devices",
    "inspect": "edgetune.analyze.silicon",
    "load_devices": "edgetune.analyze.devices",
    "plan_memory": "edgetune.analyze.memory",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


# the verb of the same name (see make_callable)
make_callable(__name__, "edgetune.optimize.analysis:analyze")
