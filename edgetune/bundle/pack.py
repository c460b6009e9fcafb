"""Create, verify and unpack signed bundles (``.etb``).

A bundle is a tar whose first entry is ``manifest.dsse.json`` (a DSSE envelope around the
manifest) followed by the files the manifest lists, in its order. Verification reads the
envelope first, checks the signature against trusted keys, then the manifest's policy (expiry,
version floor, tier, runtime), then streams every file through SHA-256; nothing is written until
all of that passed. Unpacking then extracts into a fresh temporary folder beside the destination,
hashing again as it writes, and renames the folder into place only when every file matched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgetune.bundle.archive import Entry, Limits, iter_entries, write_archive
from edgetune.bundle.describe import (
    collect_files,
    describe_model,
    file_entry,
    load_json_object,
    metrics_from_report,
    min_onnxruntime,
)
from edgetune.bundle.errors import BundleError, Reason
from edgetune.bundle.manifest import (
    ENVELOPE_NAME,
    PAYLOAD_TYPE,
    FileEntry,
    Manifest,
    check_slug,
    format_time,
    parse_time,
    parse_version,
)
from edgetune.bundle.sign import MAX_ENVELOPE_BYTES, SigningKey, VerifyKey, open_envelope
from edgetune.core.fileio import atomic_path
from edgetune.errors import ConfigError, OutputError

__all__ = [
    "BundleConfig",
    "BundleResult",
    "VerifiedBundle",
    "VerifyConfig",
    "create_bundle",
    "file_sha256",
    "unpack_bundle",
    "verify_bundle",
    "verify_dir",
]


@dataclass(frozen=True, kw_only=True)
class BundleConfig:
    """What to stamp on a new bundle."""

    version: str
    name: str | None = None
    tier: str = "any"
    expires_in_days: float = 90.0
    min_onnxruntime: str | None = None
    """Oldest ONNX Runtime allowed to run it; default: the first that supports the opset."""
    report: Path | None = None
    plan: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)
    created: dt.datetime | None = None
    """Creation time (default: now); expiry counts from it."""

    def validate(self) -> BundleConfig:
        parse_version(self.version)
        check_slug(self.tier, "tier")
        if not 0 < self.expires_in_days <= 3650:
            raise ConfigError(f"expires_in_days must be in (0, 3650]; got {self.expires_in_days}")
        if self.min_onnxruntime is not None:
            parse_version(self.min_onnxruntime)
        return self


@dataclass(frozen=True, kw_only=True)
class BundleResult:
    path: Path
    manifest: Manifest
    sha256: str
    size: int


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    """What a verifier insists on beyond the signature and the hashes."""

    min_version: str | None = None
    """Refuse bundles older than this (the installed version: no rollback)."""
    tier: str | None = None
    runtime_versions: Mapping[str, str] | None = None
    """Installed runtimes, e.g. ``{"onnxruntime": "1.20.1"}``; None skips the check."""
    now: dt.datetime | None = None
    clock_skew_s: float = 300.0
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, kw_only=True)
class VerifiedBundle:
    path: Path
    manifest: Manifest
    envelope: bytes
    sha256: str
    size: int


def create_bundle(source: Path | str, config: BundleConfig, *, key: SigningKey,
                  output: Path | str) -> BundleResult:
    """Bundle a model file (and its external data) or a cascade folder, signed with ``key``."""
    config = config.validate()
    source, output = Path(source), Path(output)
    files = collect_files(source)
    blobs = [(rel, path.read_bytes()) for rel, path in files]
    manifest = _manifest(source, config, files, blobs)
    envelope = _sign(manifest, key)
    with atomic_path(output, "bundle") as tmp, tmp.open("wb") as out:
        write_archive(out, [(ENVELOPE_NAME, envelope), *blobs])
    return BundleResult(path=output, manifest=manifest, sha256=file_sha256(output),
                        size=output.stat().st_size)


def _sign(manifest: Manifest, key: SigningKey) -> bytes:
    from edgetune.bundle.sign import sign_envelope

    envelope = sign_envelope(manifest.to_bytes(), PAYLOAD_TYPE, key)
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ConfigError(f"manifest is {len(envelope)} bytes signed, over {MAX_ENVELOPE_BYTES}; "
                          "pass a smaller --report or --plan")
    return envelope


def _manifest(source: Path, config: BundleConfig, files: list[tuple[str, Path]],
              blobs: list[tuple[str, bytes]]) -> Manifest:
    created = config.created or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    models = tuple(describe_model(rel, path) for rel, path in files if rel.endswith(".onnx"))
    plan = load_json_object(config.plan, "precision plan")
    extra = {**config.extra, **({"plan": plan} if plan else {})}
    opset = max(m["opset"] for m in models)
    return Manifest(
        name=config.name or source.stem, version=config.version, created=format_time(created),
        expires=format_time(created + dt.timedelta(days=config.expires_in_days)),
        tier=config.tier,
        min_runtime={"onnxruntime": config.min_onnxruntime or min_onnxruntime(opset)},
        files=tuple(file_entry(rel, data) for rel, data in blobs),
        models=models, entrypoint=_entrypoint(models), metrics=metrics_from_report(config.report),
        extra=extra,
    )


def _entrypoint(models: tuple[dict[str, object], ...]) -> str:
    """The model a device runs first: the first .onnx in path order (a cascade's small one)."""
    return str(models[0]["path"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


Sink = Callable[[FileEntry, Iterator[bytes]], None]


def scan(path: Path, open_payload: Callable[[bytes], bytes], limits: Limits,
         check: Callable[[Manifest], None] = lambda m: None,
         sink: Sink | None = None) -> tuple[bytes, Manifest, list[Entry]]:
    """Read a bundle: envelope first, then every listed file hashed (and handed to ``sink``)."""
    entries = iter_entries(path, limits)
    envelope = _envelope_entry(path, entries)
    manifest = Manifest.from_bytes(open_payload(envelope))
    check(manifest)
    seen: list[Entry] = []
    for entry in entries:
        expected = manifest.file(entry.name)
        if expected is None:
            raise BundleError(Reason.MALFORMED, f"entry {entry.name!r} is not in the signed "
                              "manifest; refusing the bundle")
        if entry.size != expected.size:
            raise BundleError(Reason.TAMPERED, f"file {entry.name!r} is {entry.size} bytes, the "
                              f"signed manifest says {expected.size}; the bundle was changed")
        chunks = _hashed(entry, expected)
        if sink is None:
            for _ in chunks:
                pass
        else:
            sink(expected, chunks)
        seen.append(entry)
    _check_complete(manifest, seen)
    return envelope, manifest, seen


def _envelope_entry(path: Path, entries: Iterator[Entry]) -> bytes:
    first = next(entries, None)
    if first is None or first.name != ENVELOPE_NAME:
        raise BundleError(Reason.MALFORMED, f"{str(path)!r} does not start with "
                          f"{ENVELOPE_NAME!r}; it is not a signed edgetune bundle")
    if first.size > MAX_ENVELOPE_BYTES:
        raise BundleError(Reason.TOO_LARGE, f"signature envelope is {first.size} bytes")
    return first.read()


def _hashed(entry: Entry, expected: FileEntry) -> Iterator[bytes]:
    digest = hashlib.sha256()
    for chunk in entry.chunks():
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != expected.sha256:
        raise BundleError(Reason.TAMPERED, f"file {entry.name!r} has SHA-256 "
                          f"{digest.hexdigest()[:16]}..., the signed manifest says "
                          f"{expected.sha256[:16]}...; the bundle was changed")


def _check_complete(manifest: Manifest, seen: list[Entry]) -> None:
    names = [e.name for e in seen]
    missing = [f.path for f in manifest.files if f.path not in names]
    if missing:
        raise BundleError(Reason.TRUNCATED, f"bundle ends before file {missing[0]!r} "
                          f"({len(missing)} of {len(manifest.files)} missing); download it again")


def check_policy(manifest: Manifest, config: VerifyConfig) -> None:
    """Expiry, version floor, tier and runtime: the checks after the signature."""
    now = config.now or dt.datetime.now(dt.timezone.utc)
    if now > parse_time(manifest.expires):
        raise BundleError(Reason.EXPIRED, f"bundle {manifest.version} expired at "
                          f"{manifest.expires}; ask the publisher for a fresh one")
    if parse_time(manifest.created) > now + dt.timedelta(seconds=config.clock_skew_s):
        raise BundleError(Reason.EXPIRED, f"bundle claims creation at {manifest.created}, in the "
                          "future; check this device's clock")
    if config.min_version and parse_version(manifest.version) < parse_version(config.min_version):
        raise BundleError(Reason.ROLLBACK, f"bundle version {manifest.version} is older than "
                          f"{config.min_version} (installed); refusing a rollback")
    if config.tier and manifest.tier not in ("any", config.tier):
        raise BundleError(Reason.INCOMPATIBLE, f"bundle is for device tier {manifest.tier!r}, "
                          f"this device is {config.tier!r}")
    for runtime, have in (config.runtime_versions or {}).items():
        need = manifest.min_runtime.get(runtime)
        if need and _numeric(have) < parse_version(need):
            raise BundleError(Reason.INCOMPATIBLE, f"bundle needs {runtime} >= {need}, this "
                              f"device has {have}; update the runtime first")


def _numeric(version: str) -> tuple[int, ...]:
    """A runtime version's leading dotted integers ('1.20.0.dev1' -> (1, 20, 0, 0))."""
    parts: list[str] = []
    for part in version.split(".")[:4]:
        if not part.isdigit():
            break
        parts.append(part)
    return parse_version(".".join(parts) or "0")


def verify_bundle(path: Path | str, config: VerifyConfig | None = None, *,
                  keys: Sequence[VerifyKey]) -> VerifiedBundle:
    """Check a bundle completely without writing anything; raise BundleError with the reason."""
    path, config = Path(path), config or VerifyConfig()
    envelope, manifest, _ = scan(
        path, lambda env: open_envelope(env, keys, PAYLOAD_TYPE), config.limits,
        lambda m: check_policy(m, config))
    return VerifiedBundle(path=path, manifest=manifest, envelope=envelope,
                          sha256=file_sha256(path), size=path.stat().st_size)


def unpack_bundle(path: Path | str, dest: Path | str, config: VerifyConfig | None = None, *,
                  keys: Sequence[VerifyKey]) -> VerifiedBundle:
    """Verify, then extract into ``dest`` (which must not exist) through a temporary folder."""
    path, dest, config = Path(path), Path(dest), config or VerifyConfig()
    verified = verify_bundle(path, config, keys=keys)
    if dest.exists():
        raise OutputError(f"unpack destination {str(dest)!r} already exists; give a new folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        envelope, _, _ = scan(path, lambda env: _same(env, verified.envelope, keys),
                              config.limits, sink=lambda f, chunks: _write(tmp, f.path, chunks))
        _write(tmp, ENVELOPE_NAME, iter([envelope]))
        _fsync_dir(tmp)
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(verified, path=path)


def _same(envelope: bytes, verified: bytes, keys: Sequence[VerifyKey]) -> bytes:
    """The second pass must read the very envelope the first pass verified."""
    if envelope != verified:
        raise BundleError(Reason.TAMPERED, "bundle changed while it was being unpacked")
    return open_envelope(envelope, keys, PAYLOAD_TYPE)


def _write(root: Path, rel: str, chunks: Iterator[bytes]) -> None:
    """Create ``root/rel`` fresh (never through a link) and write it durably."""
    target = root.joinpath(*rel.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o644)
    with os.fdopen(fd, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify_dir(folder: Path | str, *, keys: Sequence[VerifyKey]) -> Manifest:
    """Re-check an unpacked bundle: its envelope's signature and every file's SHA-256."""
    folder = Path(folder)
    try:
        envelope = (folder / ENVELOPE_NAME).read_bytes()
    except OSError as exc:
        raise BundleError(Reason.TRUNCATED, f"{str(folder)!r} has no readable "
                          f"{ENVELOPE_NAME} ({exc.strerror})") from None
    manifest = Manifest.from_bytes(open_envelope(envelope, keys, PAYLOAD_TYPE))
    for entry in manifest.files:
        target = folder.joinpath(*entry.path.split("/"))
        if target.is_symlink() or not target.is_file():
            raise BundleError(Reason.TRUNCATED, f"installed file {entry.path!r} is missing")
        if target.stat().st_size != entry.size or file_sha256(target) != entry.sha256:
            raise BundleError(Reason.TAMPERED, f"installed file {entry.path!r} does not match "
                              "its signed SHA-256")
    return manifest
