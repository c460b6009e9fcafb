"""Optional dependencies of the cascade, imported on first use with a message naming the extra."""

from __future__ import annotations

import importlib
from typing import Any

from edgetune.errors import MissingExtraError

__all__ = ["scipy_module", "serve_module"]


def scipy_module(name: str) -> Any:
    """``scipy.<name>``, or an error saying ``pip install 'edgetune[cascade]'``."""
    try:
        return importlib.import_module(f"scipy.{name}")
    except ImportError:
        raise MissingExtraError("scipy", "cascade", "cascade calibration and drift") from None


def serve_module(name: str) -> Any:
    """``fastapi``, ``uvicorn`` or ``httpx`` (or a submodule), or an error naming the extra."""
    try:
        return importlib.import_module(name)
    except ImportError:
        package = name.partition(".")[0]
        raise MissingExtraError(package, "serve", "serving models over HTTP") from None
