"""Report files: versioned JSON, written atomically, read back through a version allow-list."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from edgetune._version import __version__
from edgetune.core.fileio import atomic_write_text
from edgetune.errors import DataError

__all__ = ["SCHEMA", "jsonable", "load_report", "new_report", "write_json"]

SCHEMA = "edgetune.report/1"
_READABLE = {SCHEMA}


def new_report(kind: str) -> dict[str, Any]:
    """An empty report of ``kind`` with the fields every report has."""
    return {
        "schema": SCHEMA,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "edgetune_version": __version__,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }


def write_json(report: dict[str, Any], path: Path | str) -> Path:
    text = json.dumps(jsonable(report), indent=2, allow_nan=False)
    return atomic_write_text(Path(path), text + "\n", "report")


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, paths as text, NaN and infinity as null
    (an infinite SQNR means identical outputs; JSON has no way to say infinity)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def load_report(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read report {str(path)!r}: {exc}; give a report.json") from None
    if not isinstance(data, dict) or data.get("schema") not in _READABLE:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise DataError(
            f"{str(path)!r} is not an edgetune report this version reads (schema {got!r}, "
            f"readable: {sorted(_READABLE)})"
        )
    return data
