"""The cascade directory: both models, the calibrated gate, its guarantee, drift reference.

Layout (``edgetune.cascade/1``)::

    CASCADE_DIR/
      cascade.json     manifest: gate (score, temperature, threshold), target, guarantee,
                       costs, data split, and every file's SHA-256
      small.onnx       the on-device model
      large.onnx       the model escalated to (in process, or served remotely)
      reference.json   gate-score statistics at calibration time, for drift checks
      report.json      the build report (trade-off curve, calibration); report.html

The directory is written whole into a temporary sibling and renamed into place, so a failed
build or recalibration never leaves a half-written cascade. Reading goes through a schema
allow-list, accepts only plain file names inside the directory, and checks every hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune._version import __version__
from edgetune.cascade.calibration import ScoreKind, confidence_scores
from edgetune.cascade.config import Costs, GateMetric, Target
from edgetune.cascade.drift import DriftReference
from edgetune.core.model import Model
from edgetune.errors import DataError, ModelError, OutputError

__all__ = ["SCHEMA", "CascadeSpec", "Gate", "LoadedCascade", "load_cascade", "write_cascade_dir"]

SCHEMA = "edgetune.cascade/1"
_READABLE = {SCHEMA}
MANIFEST = "cascade.json"
SMALL, LARGE, REFERENCE = "small.onnx", "large.onnx", "reference.json"


@dataclass(frozen=True, kw_only=True)
class Gate:
    """Turns the small model's first output into a confidence and decides to escalate."""

    score: ScoreKind
    temperature: float
    threshold: float
    probabilities: bool = False
    """The small model outputs probabilities; they are logged before temperature scaling."""

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        array = np.asarray(outputs).reshape(len(outputs), -1)
        logits = np.log(np.clip(array, 1e-12, None)) if self.probabilities else array
        return confidence_scores(logits, self.score, self.temperature)

    def escalate(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score.value,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "probabilities": self.probabilities,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gate:
        return cls(
            score=ScoreKind(data["score"]),
            temperature=float(data["temperature"]),
            threshold=float(data["threshold"]),
            probabilities=bool(data["probabilities"]),
        )


@dataclass(frozen=True, kw_only=True)
class CascadeSpec:
    """Everything in ``cascade.json`` except the file hashes."""

    gate: Gate
    metric: GateMetric
    target: Target
    confidence: float
    guarantee: dict[str, Any]
    expected: dict[str, Any]
    costs: Costs
    data: dict[str, Any]
    models: dict[str, str] = field(default_factory=dict)
    """Original names of the small and large models."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "edgetune_version": __version__,
            "gate": self.gate.to_dict(),
            "metric": self.metric.value,
            "target": self.target.to_dict(),
            "confidence": self.confidence,
            "guarantee": self.guarantee,
            "expected": self.expected,
            "costs": self.costs.to_dict(),
            "data": self.data,
            "models": dict(self.models),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeSpec:
        return cls(
            gate=Gate.from_dict(data["gate"]),
            metric=GateMetric(data["metric"]),
            target=Target.from_dict(data["target"]),
            confidence=float(data["confidence"]),
            guarantee=dict(data["guarantee"]),
            expected=dict(data["expected"]),
            costs=Costs(**data["costs"]),
            data=dict(data["data"]),
            models=dict(data["models"]),
        )


@dataclass(frozen=True, kw_only=True)
class LoadedCascade:
    """A cascade directory read back and checked."""

    path: Path
    spec: CascadeSpec
    small: Model
    large: Model
    reference: DriftReference


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_text(data: dict[str, Any]) -> str:
    from edgetune.report.schema import jsonable

    return json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"


def _fill(
    tmp: Path,
    spec: CascadeSpec,
    small: Model,
    large: Model,
    reference: DriftReference,
    report: dict[str, Any] | None,
) -> None:
    payloads = {
        SMALL: small.to_bytes(),
        LARGE: large.to_bytes(),
        REFERENCE: _json_text(reference.to_dict()).encode(),
    }
    for name, data in payloads.items():
        (tmp / name).write_bytes(data)
    manifest = spec.to_dict()
    manifest["files"] = {
        name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in payloads.items()
    }
    (tmp / MANIFEST).write_text(_json_text(manifest), encoding="utf-8")
    if report is not None:
        from edgetune.report import write_html, write_json

        write_json(report, tmp / "report.json")
        write_html(report, tmp / "report.html")


def write_cascade_dir(
    out_dir: Path | str,
    spec: CascadeSpec,
    *,
    small: Model,
    large: Model,
    reference: DriftReference,
    report: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the directory into a temporary sibling, then rename it into place."""
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        _fill(tmp, spec, small, large, reference, report)
        _swap_in(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write cascade {str(out_dir)!r}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_target(out_dir: Path, overwrite: bool) -> None:
    parent = out_dir.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(
            f"cascade folder's parent {str(parent)!r} is missing or not writable; "
            "create it or choose another -o"
        )
    if not out_dir.exists():
        return
    if not overwrite:
        raise OutputError(
            f"{str(out_dir)!r} already exists; pass --overwrite to replace it or choose another -o"
        )
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file()):
        raise OutputError(
            f"{str(out_dir)!r} exists and is not a cascade directory; refusing to "
            "replace it, choose another -o"
        )


def _swap_in(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.replace(out_dir, old / "cascade")
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(old / "cascade", out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {str(path)!r}: {exc}; rebuild the cascade with edgetune cascade build"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{str(path)!r} is not a JSON object; rebuild the cascade")
    return data


def _checked_file(root: Path, name: str, files: dict[str, Any]) -> bytes:
    entry = files.get(name)
    if not isinstance(entry, dict) or Path(name).name != name or name in ("", ".", ".."):
        raise DataError(
            f"cascade manifest in {str(root)!r} does not list {name!r} as a plain "
            "file name; rebuild the cascade"
        )
    try:
        data = (root / name).read_bytes()
    except OSError as exc:
        raise ModelError(
            f"cascade file {str(root / name)!r} cannot be read ({exc.strerror}); "
            "rebuild or re-copy the cascade"
        ) from None
    if _sha256(data) != entry.get("sha256"):
        raise ModelError(
            f"cascade file {str(root / name)!r} does not match the SHA-256 in "
            f"{MANIFEST}; it was changed or corrupted; rebuild or re-copy it"
        )
    return data


def load_cascade(path: Path | str) -> LoadedCascade:
    """Read a cascade directory through the schema allow-list, checking every file's hash."""
    from edgetune.load import load

    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise DataError(
            f"{str(root)!r} is not a cascade directory (no {MANIFEST}); build one "
            "with: edgetune cascade build SMALL LARGE --eval VAL ... -o DIR"
        )
    manifest = _read_json(root / MANIFEST)
    if manifest.get("schema") not in _READABLE:
        raise DataError(
            f"{str(root)!r} has cascade schema {manifest.get('schema')!r}; this "
            f"edgetune reads {sorted(_READABLE)}; rebuild or upgrade edgetune"
        )
    files = manifest.get("files", {})
    for name in (SMALL, LARGE):
        _checked_file(root, name, files)
    reference = json.loads(_checked_file(root, REFERENCE, files))
    try:
        spec = CascadeSpec.from_dict(manifest)
        ref = DriftReference.from_dict(reference)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"cascade manifest in {str(root)!r} is malformed ({exc}); rebuild it"
        ) from None
    return LoadedCascade(
        path=root, spec=spec, small=load(root / SMALL), large=load(root / LARGE), reference=ref
    )
