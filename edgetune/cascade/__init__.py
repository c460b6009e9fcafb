"""cascade: a small on-device model answers; a calibrated gate escalates the hard inputs.

::

    from edgetune.cascade import CascadeConfig, Target, build_cascade
    result = build_cascade("small.onnx", "large.onnx",
                           CascadeConfig(target=Target(max_drop=0.005)), data="val.npz")
    result.save("my-cascade")          # models, gate, guarantee, drift reference, report

Serving (``create_cascade_app``, ``create_model_app``) needs the ``serve`` extra; calibration,
threshold search and drift need the ``cascade`` extra (scipy). Names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BackgroundServer",
    "CascadeAnswer",
    "CascadeBuildResult",
    "CascadeConfig",
    "CascadeRunner",
    "CascadeSpec",
    "Costs",
    "DriftMonitor",
    "DriftReference",
    "DriftStatus",
    "Gate",
    "GateMetric",
    "LoadedCascade",
    "RecalibrateConfig",
    "RecalibrateResult",
    "ScoreKind",
    "ServeConfig",
    "Target",
    "TargetNotMetError",
    "build_cascade",
    "check_drift",
    "choose_threshold",
    "create_cascade_app",
    "create_model_app",
    "expected_calibration_error",
    "fit_temperature",
    "load_cascade",
    "recalibrate",
    "run_server",
]

_LAZY = {
    "BackgroundServer": "serve",
    "CascadeAnswer": "runner",
    "CascadeBuildResult": "build",
    "CascadeConfig": "config",
    "CascadeRunner": "runner",
    "CascadeSpec": "artifact",
    "Costs": "config",
    "DriftMonitor": "drift",
    "DriftReference": "drift",
    "DriftStatus": "drift",
    "Gate": "artifact",
    "GateMetric": "config",
    "LoadedCascade": "artifact",
    "RecalibrateConfig": "recalibration",
    "RecalibrateResult": "recalibration",
    "ScoreKind": "calibration",
    "ServeConfig": "serve",
    "Target": "config",
    "TargetNotMetError": "threshold",
    "build_cascade": "build",
    "check_drift": "drift",
    "choose_threshold": "threshold",
    "create_cascade_app": "serve",
    "create_model_app": "serve",
    "expected_calibration_error": "calibration",
    "fit_temperature": "calibration",
    "load_cascade": "artifact",
    "recalibrate": "recalibration",
    "run_server": "serve",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetune.cascade' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgetune.cascade.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
