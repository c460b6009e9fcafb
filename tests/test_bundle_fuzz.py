"""Fuzzing the bundle and delta readers: malformed archives, manifests and signatures give a
BundleError (a clear, one-line reason), never a crash, and nothing is ever written outside the
target folder."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetune.bundle.delta import diff_bundles, patch_bundle
from edgetune.bundle.errors import BundleError
from edgetune.bundle.manifest import ENVELOPE_NAME, PAYLOAD_TYPE
from edgetune.bundle.pack import BundleConfig, create_bundle, unpack_bundle, verify_bundle
from edgetune.bundle.sign import load_private_key, load_public_key, sign_envelope, write_keypair
from edgetune.testing.tiny import tiny_cnn

FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    key_path, pub_path = write_keypair(root / "fleet")
    key = load_private_key(key_path)
    tiny_cnn().save(root / "model.onnx")
    tiny_cnn(seed=1).save(root / "model2.onnx")
    v1 = create_bundle(root / "model.onnx", BundleConfig(version="1"), key=key,
                       output=root / "v1.etb").path
    v2 = create_bundle(root / "model2.onnx", BundleConfig(version="2"), key=key,
                       output=root / "v2.etb").path
    delta = diff_bundles(v1, v2, output=root / "d.etd").path
    return {"root": root, "key": key, "pub": load_public_key(pub_path), "v1": v1, "v2": v2,
            "delta": delta}


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgetune-fuzz-"))


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _unpack_is_safe(path: Path, pub: Any) -> bool:
    """Unpack into scratch/out/dest; only 'dest' may ever appear in scratch/out."""
    scratch = _scratch()
    try:
        (scratch / "out").mkdir()
        try:
            unpack_bundle(path, scratch / "out" / "dest", keys=[pub])
            ok = True
        except BundleError as exc:
            assert "\n" not in str(exc) and exc.reason.value in str(exc)
            ok = False
        assert {p.name for p in (scratch / "out").iterdir()} <= {"dest"}
        assert _files_under(scratch) <= {"out", "out/dest"} | {
            f"out/dest/{n}" for n in ("model.onnx", ENVELOPE_NAME)}
        return ok
    finally:
        shutil.rmtree(scratch)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=1,
                      max_size=4))
def test_flipped_bytes_never_slip_through(world: dict[str, Any],
                                          flips: list[tuple[int, int]]) -> None:
    data = bytearray(world["v1"].read_bytes())
    for position, mask in flips:
        data[position % len(data)] ^= mask
    scratch = _scratch()
    try:
        path = scratch / "b.etb"
        path.write_bytes(bytes(data))
        if _unpack_is_safe(path, world["pub"]):
            # only padding or unused header fields changed: the content must be the original
            verified = verify_bundle(path, keys=[world["pub"]])
            assert verified.manifest.files == verify_bundle(
                world["v1"], keys=[world["pub"]]).manifest.files
    finally:
        shutil.rmtree(scratch)


@FUZZ
@given(cut=st.integers(min_value=0), junk=st.binary(max_size=64))
def test_truncated_or_extended_archives(world: dict[str, Any], cut: int, junk: bytes) -> None:
    data = world["v1"].read_bytes()
    scratch = _scratch()
    try:
        path = scratch / "b.etb"
        path.write_bytes(data[: cut % len(data)] + junk)
        _unpack_is_safe(path, world["pub"])
    finally:
        shutil.rmtree(scratch)


_NAMES = st.one_of(
    st.sampled_from(["model.onnx", "../x", "../../etc/passwd", "/abs", "a/../../b", "dest/../x",
                     ".", "..", "a/./b", "x\\..\\y", "MODEL.ONNX", ENVELOPE_NAME, "d/" * 20 + "f",
                     "ok.bin", "nul\x00byte"]),
    st.text(min_size=1, max_size=40))
_TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                          tarfile.FIFOTYPE, tarfile.GNUTYPE_SPARSE])


@FUZZ
@given(members=st.lists(st.tuples(_NAMES, _TYPES, st.binary(max_size=32)), max_size=5),
       keep_envelope=st.booleans())
def test_hostile_archives_never_write_outside(world: dict[str, Any],
                                              members: list[tuple[str, bytes, bytes]],
                                              keep_envelope: bool) -> None:
    with tarfile.open(world["v1"]) as tar:
        originals = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    scratch = _scratch()
    try:
        path = scratch / "b.etb"
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as out:
            for info, data in originals[: 1 if keep_envelope else 0]:
                out.addfile(info, io.BytesIO(data))
            for name, kind, data in members:
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = "../../../../tmp/pwned" if kind in (tarfile.SYMTYPE,
                                                                     tarfile.LNKTYPE) else ""
                info.size = len(data) if kind == tarfile.REGTYPE else 0
                try:
                    out.addfile(info, io.BytesIO(data) if info.size else None)
                except (ValueError, UnicodeError):
                    continue
        assert not _unpack_is_safe(path, world["pub"]) or not members
    finally:
        shutil.rmtree(scratch)
    assert not os.path.exists("/tmp/pwned")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _statement(world: dict[str, Any]) -> dict[str, Any]:
    with tarfile.open(world["v1"]) as tar:
        envelope = json.loads(tar.extractfile(ENVELOPE_NAME).read())  # type: ignore[union-attr]
    return dict(json.loads(base64.b64decode(envelope["payload"])))


@FUZZ
@given(path=st.lists(st.sampled_from(["_type", "subject", "predicate", "predicateType", 0,
                                      "digest", "sha256", "annotations", "size", "name",
                                      "version", "created", "expires", "tier", "min_runtime",
                                      "models", "metrics", "extra", "entrypoint", "schema"]),
                     min_size=1, max_size=4),
       value=_JSON)
def test_signed_but_malformed_manifests(world: dict[str, Any], path: list[Any],
                                        value: Any) -> None:
    statement = _statement(world)
    node: Any = statement
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            break
    with contextlib.suppress(KeyError, IndexError, TypeError):
        node[path[-1]] = value
    try:
        payload = json.dumps(statement).encode()
    except ValueError:
        return
    envelope = sign_envelope(payload, PAYLOAD_TYPE, world["key"])
    with tarfile.open(world["v1"]) as tar:
        model = tar.extractfile("model.onnx").read()  # type: ignore[union-attr]
    scratch = _scratch()
    try:
        from edgetune.bundle.archive import write_archive

        bundle = scratch / "b.etb"
        with bundle.open("wb") as out:
            write_archive(out, [(ENVELOPE_NAME, envelope), ("model.onnx", model)])
        _unpack_is_safe(bundle, world["pub"])
    finally:
        shutil.rmtree(scratch)


@FUZZ
@given(envelope=_JSON)
def test_malformed_envelopes(world: dict[str, Any], envelope: Any) -> None:
    from edgetune.bundle.archive import write_archive

    scratch = _scratch()
    try:
        bundle = scratch / "b.etb"
        with bundle.open("wb") as out:
            write_archive(out, [(ENVELOPE_NAME, json.dumps(envelope).encode())])
        assert not _unpack_is_safe(bundle, world["pub"])
    finally:
        shutil.rmtree(scratch)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=1,
                      max_size=3))
def test_mangled_deltas_fail_or_rebuild_exactly(world: dict[str, Any],
                                                flips: list[tuple[int, int]]) -> None:
    data = bytearray(world["delta"].read_bytes())
    for position, mask in flips:
        data[position % len(data)] ^= mask
    scratch = _scratch()
    try:
        delta = scratch / "d.etd"
        delta.write_bytes(bytes(data))
        try:
            patch_bundle(world["v1"], delta, output=scratch / "out.etb", keys=[world["pub"]])
        except BundleError:
            assert not (scratch / "out.etb").exists()
        else:
            assert (scratch / "out.etb").read_bytes() == world["v2"].read_bytes()
        assert {p.name for p in scratch.iterdir()} <= {"d.etd", "out.etb"}
    finally:
        shutil.rmtree(scratch)
