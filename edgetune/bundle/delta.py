"""Tensor-level deltas between two bundles (``.etd``): send only what changed.

An ONNX file is a protobuf message, and every weight is one ``initializer`` field of the graph.
The delta cuts both bundles along those field boundaries (each initializer, each node, each
top-level field of the model; other files whole), keys every piece by its SHA-256, and describes
the new bundle as a list of operations over its exact bytes: *copy this range of the old bundle*
or *take these new bytes*. A retrained classifier then costs only its own tensors plus a few
hundred bytes of headers and the new signed manifest.

Patching replays the operations, checks the result's SHA-256 against the one the delta names
(taken from the signed bundle it was made from), and checks the rebuilt bundle itself: hashes
against its signed manifest always, the signature too when a key is given. A forged delta can
therefore only fail, never install something unsigned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.bundle.archive import Entry, Limits, iter_entries, write_archive
from edgetune.bundle.errors import BundleError, Reason
from edgetune.bundle.manifest import Manifest
from edgetune.bundle.pack import VerifyConfig, file_sha256, scan, verify_bundle
from edgetune.bundle.sign import VerifyKey, parse_envelope
from edgetune.core.fileio import atomic_path

__all__ = ["DeltaResult", "PatchResult", "diff_bundles", "patch_bundle"]

SCHEMA = "edgetune.delta/1"
MIN_COPY = 64
"""Pieces shorter than this travel as new bytes: a copy instruction would cost as much."""
MAX_PLAN_BYTES = 64 << 20
COPY, DATA = 0, 1
_GRAPH, _INITIALIZER, _TENSOR_NAME = 7, 5, 8


@dataclass(frozen=True, kw_only=True)
class DeltaResult:
    path: Path
    size: int
    full_size: int
    stats: dict[str, Any]

    @property
    def ratio(self) -> float:
        """Delta bytes over full bundle bytes."""
        return self.size / self.full_size


@dataclass(frozen=True, kw_only=True)
class PatchResult:
    path: Path
    sha256: str
    size: int
    manifest: Manifest
    signature_checked: bool


# -- protobuf wire format: just enough to find field boundaries -----------------------------------

def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, span start, value start, span end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        key, value_start = _varint(buf, pos, end)
        wire = key & 7
        if wire == 0:
            _, stop = _varint(buf, value_start, end)
        elif wire in (1, 5):
            stop = value_start + (8 if wire == 1 else 4)
        elif wire == 2:
            length, value_start = _varint(buf, value_start, end)
            stop = value_start + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if stop > end:
            raise ValueError("field runs past its message")
        yield key >> 3, pos, value_start, stop
        pos = stop


def onnx_pieces(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Spans covering buf[start:end] exactly: each model field, the graph cut per field."""
    try:
        spans: list[tuple[int, int]] = []
        for number, span, value, stop in _fields(buf, start, end):
            if number == _GRAPH:
                spans.append((span, value))
                spans.extend((s, e) for _, s, _, e in _fields(buf, value, stop))
            else:
                spans.append((span, stop))
        return spans
    except ValueError:
        return [(start, end)]


def _tensors(buf: bytes, start: int, end: int) -> dict[str, bytes]:
    """Initializer name -> its serialized bytes, for the change statistics."""
    found: dict[str, bytes] = {}
    try:
        for number, _, value, stop in _fields(buf, start, end):
            if number != _GRAPH:
                continue
            for field_no, _, tvalue, tstop in _fields(buf, value, stop):
                if field_no == _INITIALIZER:
                    found[_tensor_name(buf, tvalue, tstop)] = buf[tvalue:tstop]
    except (ValueError, UnicodeDecodeError):
        return {}
    return found


def _tensor_name(buf: bytes, start: int, end: int) -> str:
    for number, _, value, stop in _fields(buf, start, end):
        if number == _TENSOR_NAME:
            return buf[value:stop].decode("utf-8")
    return f"@{start}"


def _pieces(buf: bytes, entry: Entry) -> list[tuple[int, int]]:
    start, end = entry.offset, entry.offset + entry.size
    return onnx_pieces(buf, start, end) if entry.name.endswith(".onnx") else [(start, end)]


# -- diff ----------------------------------------------------------------------------------------

def _read_unsigned(path: Path, limits: Limits) -> tuple[bytes, Manifest, list[Entry]]:
    """Structure and hashes checked against the manifest; the signature is the patcher's job."""
    envelope, manifest, entries = scan(path, lambda env: parse_envelope(env).payload, limits)
    return envelope, manifest, entries


def diff_bundles(old: Path | str, new: Path | str, *, output: Path | str,
                 limits: Limits | None = None) -> DeltaResult:
    """Write a delta that turns bundle ``old`` into bundle ``new``."""
    old, new, output = Path(old), Path(new), Path(output)
    limits = limits or Limits()
    _, old_manifest, old_entries = _read_unsigned(old, limits)
    _, new_manifest, new_entries = _read_unsigned(new, limits)
    old_buf, new_buf = old.read_bytes(), new.read_bytes()
    index = _index(old_buf, old_entries)
    ops, data = _plan(new_buf, new_entries, index)
    stats = _stats(old_buf, old_entries, new_buf, new_entries, ops)
    plan = {
        "schema": SCHEMA,
        "base": {"sha256": hashlib.sha256(old_buf).hexdigest(), "size": len(old_buf),
                 "version": old_manifest.version},
        "target": {"sha256": hashlib.sha256(new_buf).hexdigest(), "size": len(new_buf),
                   "version": new_manifest.version},
        "ops": ops, "stats": stats,
    }
    body = json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()
    with atomic_path(output, "delta") as tmp, tmp.open("wb") as out:
        write_archive(out, [("delta.json", body), ("data.bin", bytes(data))])
    size = output.stat().st_size
    stats = {**stats, "delta_bytes": size, "full_bytes": len(new_buf),
             "ratio": size / len(new_buf)}
    return DeltaResult(path=output, size=size, full_size=len(new_buf), stats=stats)


def _index(buf: bytes, entries: list[Entry]) -> dict[bytes, int]:
    index: dict[bytes, int] = {}
    for entry in entries:
        for start, end in _pieces(buf, entry):
            if end - start >= MIN_COPY:
                index.setdefault(hashlib.sha256(buf[start:end]).digest(), start)
    return index


def _plan(buf: bytes, entries: list[Entry], index: dict[bytes, int]
          ) -> tuple[list[list[int]], bytearray]:
    ops: list[list[int]] = []
    data = bytearray()
    cursor = 0
    for entry in entries:
        spans = [(cursor, entry.offset), *_pieces(buf, entry)]
        for start, end in spans:
            _emit(ops, data, buf, start, end, index)
        cursor = entry.offset + entry.size
    _emit(ops, data, buf, cursor, len(buf), index)
    return ops, data


def _emit(ops: list[list[int]], data: bytearray, buf: bytes, start: int, end: int,
          index: dict[bytes, int]) -> None:
    if end <= start:
        return
    found = index.get(hashlib.sha256(buf[start:end]).digest()) if end - start >= MIN_COPY else None
    if found is None:
        op = [DATA, len(data), end - start]
        data += buf[start:end]
    else:
        op = [COPY, found, end - start]
    last = ops[-1] if ops else None
    if last is not None and last[0] == op[0] and last[1] + last[2] == op[1]:
        last[2] += op[2]
    else:
        ops.append(op)


def _stats(old_buf: bytes, old_entries: list[Entry], new_buf: bytes, new_entries: list[Entry],
           ops: list[list[int]]) -> dict[str, Any]:
    old_t = {k: v for e in old_entries if e.name.endswith(".onnx")
             for k, v in _tensors(old_buf, e.offset, e.offset + e.size).items()}
    new_t = {k: v for e in new_entries if e.name.endswith(".onnx")
             for k, v in _tensors(new_buf, e.offset, e.offset + e.size).items()}
    changed = sorted(k for k, v in new_t.items() if k in old_t and old_t[k] != v)
    return {
        "tensors": len(new_t), "tensors_changed": len(changed),
        "tensors_added": len(new_t.keys() - old_t.keys()),
        "tensors_removed": len(old_t.keys() - new_t.keys()),
        "changed": changed[:50],
        "copied_bytes": sum(op[2] for op in ops if op[0] == COPY),
        "new_bytes": sum(op[2] for op in ops if op[0] == DATA),
    }


# -- patch ---------------------------------------------------------------------------------------

def patch_bundle(old: Path | str, delta: Path | str, *, output: Path | str,
                 keys: Sequence[VerifyKey] = (), config: VerifyConfig | None = None
                 ) -> PatchResult:
    """Rebuild the new bundle from ``old`` and ``delta``; it must be byte-identical to the one
    the delta was made from, and pass verification (with ``keys``: the signature too)."""
    old, delta, output = Path(old), Path(delta), Path(output)
    config = config or VerifyConfig()
    plan, data = _read_delta(delta, config.limits)
    base_sha = file_sha256(old)
    if base_sha != plan["base"]["sha256"]:
        raise BundleError(Reason.WRONG_BASE, f"delta was made for base bundle "
                          f"{plan['base']['sha256'][:16]}... (version {plan['base']['version']}), "
                          f"got {base_sha[:16]}...; patch the bundle it was made from")
    ops = _checked_ops(plan, old.stat().st_size, len(data))
    with atomic_path(output, "patched bundle") as tmp:
        sha = _apply(old, data, ops, tmp)
        if sha != plan["target"]["sha256"]:
            raise BundleError(Reason.TAMPERED, f"rebuilt bundle has SHA-256 {sha[:16]}..., the "
                              f"signed one {plan['target']['sha256'][:16]}...; get a fresh delta")
        manifest = _verify_rebuilt(tmp, keys, config)
    return PatchResult(path=output, sha256=sha, size=output.stat().st_size, manifest=manifest,
                       signature_checked=bool(keys))


def _verify_rebuilt(path: Path, keys: Sequence[VerifyKey], config: VerifyConfig) -> Manifest:
    if keys:
        return verify_bundle(path, config, keys=keys).manifest
    return _read_unsigned(path, config.limits)[1]


def _read_delta(path: Path, limits: Limits) -> tuple[dict[str, Any], bytes]:
    entries = iter_entries(path, limits)
    head = next(entries, None)
    if head is None or head.name != "delta.json" or head.size > MAX_PLAN_BYTES:
        raise BundleError(Reason.MALFORMED, f"{str(path)!r} is not an edgetune delta (no "
                          "delta.json first); make one with: edgetune bundle diff")
    plan = _parse_plan(head.read())
    body = next(entries, None)
    if body is None or body.name != "data.bin":
        raise BundleError(Reason.TRUNCATED, f"delta {str(path)!r} has no data.bin; "
                          "download it again")
    data = body.read()
    if next(entries, None) is not None:
        raise BundleError(Reason.MALFORMED, f"delta {str(path)!r} has unexpected extra entries")
    return plan, data


def _parse_plan(raw: bytes) -> dict[str, Any]:
    try:
        plan = json.loads(raw.decode("utf-8"))
        if plan["schema"] != SCHEMA:
            raise ValueError(f"schema {plan['schema']!r}, this edgetune reads {SCHEMA}")
        for side in ("base", "target"):
            sha, size = plan[side]["sha256"], plan[side]["size"]
            if not (isinstance(sha, str) and len(sha) == 64 and _natural(size)):
                raise ValueError(f"{side} is not a sha256 and size")
        if not isinstance(plan["ops"], list):
            raise ValueError("ops is not a list")
        return dict(plan)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BundleError(Reason.MALFORMED, f"delta plan cannot be read ({exc}); make the "
                          "delta again with: edgetune bundle diff") from None


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked_ops(plan: dict[str, Any], old_size: int, data_size: int) -> list[tuple[int, int, int]]:
    """Every operation in bounds, and together exactly the target's size."""
    ops: list[tuple[int, int, int]] = []
    for op in plan["ops"]:
        ok = isinstance(op, list) and len(op) == 3 and all(_natural(v) for v in op)
        if not ok or op[0] not in (COPY, DATA) or op[2] == 0:
            raise BundleError(Reason.MALFORMED, f"delta operation {str(op)[:40]} is malformed")
        if op[1] + op[2] > (old_size if op[0] == COPY else data_size):
            raise BundleError(Reason.MALFORMED, f"delta operation {op} reads past its source")
        ops.append((op[0], op[1], op[2]))
    if sum(op[2] for op in ops) != plan["target"]["size"]:
        raise BundleError(Reason.MALFORMED, "delta operations do not add up to the target size")
    return ops


def _apply(old: Path, data: bytes, ops: list[tuple[int, int, int]], out_path: Path) -> str:
    digest = hashlib.sha256()
    view = memoryview(data)
    with old.open("rb") as source, out_path.open("wb") as out:
        for kind, offset, length in ops:
            if kind == DATA:
                piece: bytes | memoryview = view[offset:offset + length]
            else:
                source.seek(offset)
                piece = source.read(length)
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


def delta_summary(result: DeltaResult) -> dict[str, Any]:
    """What ``edgetune bundle diff`` prints."""
    return {"path": str(result.path), **result.stats}
