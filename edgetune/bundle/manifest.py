"""The signed manifest: what a bundle holds and where, when and on what it may be installed.

The manifest is an in-toto Statement v1 (the document OpenSSF model-signing and SLSA sign):
``subject`` lists every file with its SHA-256 (and size, as an annotation), and the predicate
(type ``https://edgetune.dev/bundle/v1``) carries what a device needs to decide whether to
install it: version, creation and expiry times, device tier, minimum runtime versions, each
model's inputs, outputs and precision plan, and the metrics from the report.

Reading is by allow-list: the statement and predicate types and the schema must match, every
field has the expected type, and every path passes the archive's path check.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from edgetune.bundle.archive import check_name
from edgetune.bundle.errors import BundleError, Reason
from edgetune.errors import ConfigError

__all__ = [
    "ENVELOPE_NAME",
    "PAYLOAD_TYPE",
    "FileEntry",
    "Manifest",
    "format_time",
    "parse_time",
    "parse_version",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://edgetune.dev/bundle/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
SCHEMA = "edgetune.bundle/1"
ENVELOPE_NAME = "manifest.dsse.json"
"""The archive's first entry: the DSSE envelope whose payload is the manifest."""

_VERSION = re.compile(r"^\d{1,9}(\.\d{1,9}){0,3}$")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TIME = "%Y-%m-%dT%H:%M:%SZ"


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3, 0)``: dotted integers, padded so ``1.2 == 1.2.0``."""
    if not isinstance(text, str) or not _VERSION.match(text):
        raise ConfigError(f"version {text!r} is not dotted integers; use e.g. 1.2.0")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


def format_time(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime(_TIME)


def parse_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, _TIME).replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        raise ConfigError(f"time {text!r} is not UTC 'YYYY-MM-DDTHH:MM:SSZ'") from None


def check_slug(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SLUG.match(value):
        raise ConfigError(f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return value


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything a bundle's signature covers."""

    name: str
    version: str
    created: str
    expires: str
    tier: str = "any"
    min_runtime: dict[str, str] = field(default_factory=dict)
    files: tuple[FileEntry, ...] = ()
    models: tuple[dict[str, Any], ...] = ()
    """One per ONNX file: path, inputs, outputs, opset, precision plan."""
    entrypoint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form, JSON-only: e.g. a cascade's configuration."""

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def to_statement(self) -> dict[str, Any]:
        subject = [{"name": f.path, "digest": {"sha256": f.sha256},
                    "annotations": {"size": f.size}} for f in self.files]
        predicate = {
            "schema": SCHEMA, "name": self.name, "version": self.version,
            "created": self.created, "expires": self.expires, "tier": self.tier,
            "min_runtime": dict(self.min_runtime), "entrypoint": self.entrypoint,
            "models": list(self.models), "metrics": self.metrics, "extra": self.extra,
        }
        return {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": PREDICATE_TYPE,
                "predicate": predicate}

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): the exact bytes that get signed."""
        return json.dumps(self.to_statement(), sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data.decode("utf-8"))
            return _from_statement(raw)
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise BundleError(Reason.MALFORMED, f"manifest cannot be read ({exc}); re-create "
                              "the bundle with: edgetune bundle create") from None


def _from_statement(raw: dict[str, Any]) -> Manifest:
    if raw.get("_type") != STATEMENT_TYPE or raw.get("predicateType") != PREDICATE_TYPE:
        raise ValueError(f"not an edgetune bundle statement (predicateType "
                         f"{raw.get('predicateType')!r})")
    pred = raw["predicate"]
    if pred.get("schema") != SCHEMA:
        raise ValueError(f"unsupported manifest schema {pred.get('schema')!r}; "
                         f"this edgetune reads {SCHEMA}")
    files = tuple(_file(s) for s in _list(raw["subject"]))
    if len({f.path.casefold() for f in files}) != len(files):
        raise BundleError(Reason.UNSAFE_PATH, "manifest lists the same path twice")
    parse_version(pred["version"])
    for key in ("created", "expires"):
        parse_time(pred[key])
    manifest = Manifest(
        name=_str(pred["name"]), version=pred["version"], created=pred["created"],
        expires=pred["expires"], tier=check_slug(pred["tier"], "tier"),
        min_runtime={_str(k): _str(v) for k, v in _dict(pred["min_runtime"]).items()},
        files=files, models=tuple(_dict(m) for m in _list(pred["models"])),
        entrypoint=_str(pred["entrypoint"]), metrics=_dict(pred["metrics"]),
        extra=_dict(pred["extra"]),
    )
    if manifest.entrypoint and manifest.file(manifest.entrypoint) is None:
        raise ValueError(f"entrypoint {manifest.entrypoint!r} is not among the files")
    return manifest


def _file(subject: Any) -> FileEntry:
    sha = _dict(subject)["digest"]["sha256"]
    size = subject["annotations"]["size"]
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ValueError(f"file digest {sha!r} is not a lowercase SHA-256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"file size {size!r} is not a byte count")
    path = check_name(_str(subject["name"]))
    if path == ENVELOPE_NAME:
        raise BundleError(Reason.UNSAFE_PATH, f"manifest lists {ENVELOPE_NAME!r} as a file")
    return FileEntry(path=path, sha256=sha, size=size)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value
