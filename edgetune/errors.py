"""The one exception tree of edgetune.

Every error a user can cause says what is wrong, the value given, and how to fix it, in one
line. Each class carries the process exit code the CLI uses (1 error, 2 usage)::

    EdgetuneError (exit 1)
    ├── ModelError            a model file or module cannot be loaded or is invalid
    ├── DataError             a dataset does not match the model or is malformed
    ├── MetricError           a metric name or callable cannot be used
    ├── ConfigError (exit 2)  a configuration value is invalid
    │   └── UnknownNameError  a registry key that does not exist (lists the known ones)
    ├── MissingExtraError     an optional dependency is missing (names the pip extra)
    ├── RuntimeBackendError   a runtime failed to create a session or run the model
    ├── QuantizationError     quantization could not produce a model
    └── OutputError           an output path cannot be written
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DataError",
    "EdgetuneError",
    "MetricError",
    "MissingExtraError",
    "ModelError",
    "OutputError",
    "QuantizationError",
    "RuntimeBackendError",
    "UnknownNameError",
]


class EdgetuneError(Exception):
    """Base of every error edgetune raises on purpose."""

    exit_code = 1


class ModelError(EdgetuneError):
    """A model file or module cannot be loaded, or is not a valid model."""


class DataError(EdgetuneError):
    """A dataset cannot be read or does not match the model's inputs."""


class MetricError(EdgetuneError):
    """A metric cannot be resolved or computed."""


class ConfigError(EdgetuneError):
    """A configuration value is invalid (a usage error)."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """A name that is not in a registry."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        listed = ", ".join(sorted(known))
        super().__init__(f"unknown {kind} {name!r}; choose one of: {listed}")
        self.kind = kind
        self.name = name


class MissingExtraError(EdgetuneError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the {package!r} package, which is not installed; "
            f"install it with: pip install 'edgetune[{extra}]'"
        )
        self.package = package
        self.extra = extra


class RuntimeBackendError(EdgetuneError):
    """A runtime could not create a session or run the model."""


class QuantizationError(EdgetuneError):
    """Quantization could not produce a valid model."""


class OutputError(EdgetuneError):
    """An output path cannot be written."""
