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


def make_callable(module_name: str, target: str) -> None:
    """Make package ``module_name`` callable as the verb ``target`` (``"module:function"``).

    Used where a verb and a package share a name (``edgetune.analyze``, ``edgetune.optimize``):
    whichever Python binds to the attribute first, a call still reaches the verb.
    """
    import sys
    import types

    verb_module, _, verb_name = target.partition(":")

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(verb_module), verb_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
