"""Lazy package attributes: a package lists ``name -> module`` and imports on first use.

Keeps ``import edgetune`` (and each subpackage) light: heavy backends load only when a caller
touches the name that needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(
    package: str,
    table: Mapping[str, str],
    namespace: dict[str, Any],
    *,
    modules: frozenset[str] = frozenset(),
) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``table`` names; names in ``modules`` are modules."""

    def __getattr__(name: str) -> Any:
        module_name = table.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name)
        value = module if name in modules else getattr(module, name)
        namespace[name] = value
        return value

    return __getattr__
