"""Bundles: what the manifest says, and every reason a bundle is refused."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetune.bundle.archive import Limits, write_archive
from edgetune.bundle.errors import BundleError, Reason
from edgetune.bundle.manifest import ENVELOPE_NAME, PAYLOAD_TYPE, FileEntry, Manifest, parse_time
from edgetune.bundle.pack import (
    BundleConfig,
    VerifyConfig,
    create_bundle,
    unpack_bundle,
    verify_bundle,
    verify_dir,
)
from edgetune.bundle.sign import load_private_key, load_public_key, sign_envelope, write_keypair
from edgetune.errors import ConfigError, OutputError
from edgetune.report.schema import new_report, write_json
from edgetune.testing.tiny import tiny_cnn, tiny_mlp

CREATED = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    key_path, pub_path = write_keypair(tmp_path / "fleet")
    return load_private_key(key_path), load_public_key(pub_path)


@pytest.fixture
def bundle(tmp_path: Path, keys: Any) -> Path:
    tiny_cnn().save(tmp_path / "model.onnx")
    config = BundleConfig(version="1.2.0", created=CREATED, expires_in_days=30)
    return create_bundle(tmp_path / "model.onnx", config, key=keys[0],
                         output=tmp_path / "model.etb").path


def _verify(path: Path, keys: Any, **config: Any) -> Any:
    config.setdefault("now", CREATED + dt.timedelta(days=1))
    return verify_bundle(path, VerifyConfig(**config), keys=[keys[1]])


def _refused(reason: Reason, action: Callable[[], Any]) -> BundleError:
    with pytest.raises(BundleError) as err:
        action()
    assert err.value.reason is reason, str(err.value)
    assert "\n" not in str(err.value)
    return err.value


def _entries(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _rewrite(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with path.open("wb") as out:
        write_archive(out, entries)
    return path


def test_manifest_describes_the_model(bundle: Path, keys: Any) -> None:
    manifest = _verify(bundle, keys).manifest
    assert manifest.version == "1.2.0" and manifest.entrypoint == "model.onnx"
    (model,) = manifest.models
    assert [i["name"] for i in model["inputs"]] == ["input"]
    assert model["outputs"][0]["shape"] == ["batch", 4]
    assert model["precision"]["layers"] == {"conv": "float32", "fc": "float32"}
    assert manifest.min_runtime == {"onnxruntime": "1.12"}  # opset 17
    assert parse_time(manifest.expires) - parse_time(manifest.created) == dt.timedelta(days=30)
    entry = manifest.file("model.onnx")
    assert entry is not None and entry.size == (bundle.parent / "model.onnx").stat().st_size


def test_report_metrics_and_plan_go_into_the_manifest(tmp_path: Path, keys: Any) -> None:
    report = new_report("quantize")
    report.update(metric={"name": "top1"}, result={"metric": 0.97, "size_bytes": 10})
    write_json(report, tmp_path / "report.json")
    (tmp_path / "plan.json").write_text(json.dumps({"layers": {"fc": "int8"}}))
    tiny_mlp().save(tmp_path / "m.onnx")
    config = BundleConfig(version="2", report=tmp_path / "report.json", plan=tmp_path / "plan.json",
                          tier="arm64", min_onnxruntime="1.16")
    manifest = create_bundle(tmp_path / "m.onnx", config, key=keys[0],
                             output=tmp_path / "m.etb").manifest
    assert manifest.metrics["result"]["metric"] == 0.97
    assert manifest.extra["plan"] == {"layers": {"fc": "int8"}}
    assert manifest.tier == "arm64" and manifest.min_runtime == {"onnxruntime": "1.16"}


def test_same_inputs_give_the_same_bytes(tmp_path: Path, bundle: Path, keys: Any) -> None:
    config = BundleConfig(version="1.2.0", created=CREATED, expires_in_days=30)
    again = create_bundle(tmp_path / "model.onnx", config, key=keys[0], output=tmp_path / "b.etb")
    assert again.path.read_bytes() == bundle.read_bytes()


def test_unpack_extracts_verified_files(tmp_path: Path, bundle: Path, keys: Any) -> None:
    unpack_bundle(bundle, tmp_path / "out", VerifyConfig(now=CREATED), keys=[keys[1]])
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (tmp_path / "model.onnx").read_bytes()
    assert verify_dir(tmp_path / "out", keys=[keys[1]]).version == "1.2.0"
    with pytest.raises(OutputError, match="already exists"):
        unpack_bundle(bundle, tmp_path / "out", VerifyConfig(now=CREATED), keys=[keys[1]])


def test_cascade_folder_bundles_every_file(tmp_path: Path, keys: Any) -> None:
    folder = tmp_path / "cascade"
    (folder / "models").mkdir(parents=True)
    tiny_cnn().save(folder / "models" / "a_small.onnx")
    tiny_cnn(channels=16).save(folder / "models" / "b_large.onnx")
    (folder / "cascade.json").write_text('{"threshold": 0.8}')
    (folder / ".cache").write_text("skipped")
    manifest = create_bundle(folder, BundleConfig(version="1"), key=keys[0],
                             output=tmp_path / "c.etb").manifest
    assert [f.path for f in manifest.files] == ["cascade.json", "models/a_small.onnx",
                                                "models/b_large.onnx"]
    assert manifest.entrypoint == "models/a_small.onnx" and len(manifest.models) == 2
    (folder / "link.onnx").symlink_to(folder / "models" / "a_small.onnx")
    with pytest.raises(ConfigError, match="link"):
        create_bundle(folder, BundleConfig(version="1"), key=keys[0], output=tmp_path / "d.etb")


@pytest.mark.parametrize("version", ["1.x", "", "v1", "1..2", "1.2.3.4.5"])
def test_bad_versions_are_config_errors(version: str) -> None:
    with pytest.raises(ConfigError, match="version"):
        BundleConfig(version=version).validate()


# -- every reason a bundle is refused ------------------------------------------------------------

def test_changed_model_byte_is_tampered(bundle: Path, keys: Any) -> None:
    entries = _entries(bundle)
    model = bytearray(entries[1][1])
    model[len(model) // 2] ^= 0xFF
    _rewrite(bundle, [entries[0], (entries[1][0], bytes(model))])
    _refused(Reason.TAMPERED, lambda: _verify(bundle, keys))


def test_changed_manifest_is_tampered(bundle: Path, keys: Any) -> None:
    entries = _entries(bundle)
    envelope = json.loads(entries[0][1])
    statement = json.loads(__import__("base64").b64decode(envelope["payload"]))
    statement["predicate"]["version"] = "9.9.9"
    envelope["payload"] = __import__("base64").b64encode(json.dumps(statement).encode()).decode()
    _rewrite(bundle, [(ENVELOPE_NAME, json.dumps(envelope).encode()), entries[1]])
    _refused(Reason.TAMPERED, lambda: _verify(bundle, keys))


def test_wrong_key_is_refused(tmp_path: Path, bundle: Path) -> None:
    _, other = write_keypair(tmp_path / "other")
    err = _refused(Reason.BAD_SIGNATURE, lambda: verify_bundle(
        bundle, VerifyConfig(now=CREATED), keys=[load_public_key(other)]))
    assert "signed by key" in str(err)


def test_expired_and_future_bundles_are_refused(bundle: Path, keys: Any) -> None:
    _refused(Reason.EXPIRED, lambda: _verify(bundle, keys, now=CREATED + dt.timedelta(days=31)))
    _refused(Reason.EXPIRED, lambda: _verify(bundle, keys, now=CREATED - dt.timedelta(days=1)))


def test_older_version_than_installed_is_a_rollback(bundle: Path, keys: Any) -> None:
    _refused(Reason.ROLLBACK, lambda: _verify(bundle, keys, min_version="1.3"))
    assert _verify(bundle, keys, min_version="1.2").manifest.version == "1.2.0"


def test_other_tier_and_old_runtime_are_incompatible(tmp_path: Path, bundle: Path,
                                                     keys: Any) -> None:
    config = BundleConfig(version="1.2.0", created=CREATED, tier="arm64")
    arm = create_bundle(tmp_path / "model.onnx", config, key=keys[0], output=tmp_path / "arm.etb")
    _refused(Reason.INCOMPATIBLE, lambda: _verify(arm.path, keys, tier="x86-avx2"))
    assert _verify(arm.path, keys, tier="arm64").manifest.tier == "arm64"
    assert _verify(bundle, keys, tier="x86-avx2").manifest.tier == "any"
    _refused(Reason.INCOMPATIBLE, lambda: _verify(
        bundle, keys, runtime_versions={"onnxruntime": "1.11.1"}))
    _verify(bundle, keys, runtime_versions={"onnxruntime": "1.20.0.dev20240101"})


@pytest.mark.parametrize("name", ["../evil.onnx", "/etc/evil", "a/../../evil", "C:evil",
                                  "dir\\..\\evil", "./model.onnx", "a//b", "ok/\x00bad"])
def test_escaping_paths_are_refused(bundle: Path, keys: Any, name: str) -> None:
    entries = _entries(bundle)
    with bundle.open("wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
        for entry_name, data in [*entries, (name, b"x")]:
            info = tarfile.TarInfo(entry_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _refused(Reason.UNSAFE_PATH, lambda: _verify(bundle, keys))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                                  tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_folders_and_devices_are_refused(bundle: Path, keys: Any, kind: bytes) -> None:
    entries = _entries(bundle)
    with bundle.open("wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(ENVELOPE_NAME)
        info.size = len(entries[0][1])
        tar.addfile(info, io.BytesIO(entries[0][1]))
        link = tarfile.TarInfo("model.onnx")
        link.type, link.linkname = kind, "/etc/passwd"
        tar.addfile(link)
    _refused(Reason.UNSAFE_PATH, lambda: _verify(bundle, keys))


@pytest.mark.parametrize("duplicate", ["model.onnx", "MODEL.onnx"])
def test_duplicate_entries_are_refused(bundle: Path, keys: Any, duplicate: str) -> None:
    entries = _entries(bundle)
    _rewrite(bundle, [*entries, (duplicate, b"evil")])
    _refused(Reason.UNSAFE_PATH, lambda: _verify(bundle, keys))


def test_signed_manifest_with_escaping_path_is_refused(tmp_path: Path, keys: Any) -> None:
    manifest = Manifest(name="x", version="1", created="2026-01-01T00:00:00Z",
                        expires="2027-01-01T00:00:00Z",
                        files=(FileEntry(path="../evil", sha256="0" * 64, size=1),))
    envelope = sign_envelope(manifest.to_bytes(), PAYLOAD_TYPE, keys[0])
    path = _rewrite(tmp_path / "x.etb", [(ENVELOPE_NAME, envelope)])
    _refused(Reason.UNSAFE_PATH, lambda: _verify(path, keys))


def test_truncated_bundles_are_refused(bundle: Path, keys: Any) -> None:
    data = bundle.read_bytes()
    model_end = len(data) - 1024 - (-len(_entries(bundle)[1][1]) % 512)
    for cut in (700, 1536, len(data) // 2, model_end - 1):
        bundle.write_bytes(data[:cut])
        _refused(Reason.TRUNCATED, lambda: _verify(bundle, keys))


def test_unlisted_entry_and_wrong_size_are_refused(bundle: Path, keys: Any) -> None:
    entries = _entries(bundle)
    _rewrite(bundle, [*entries, ("extra.bin", b"x")])
    _refused(Reason.MALFORMED, lambda: _verify(bundle, keys))
    _rewrite(bundle, [entries[0], (entries[1][0], entries[1][1] + b"\0")])
    _refused(Reason.TAMPERED, lambda: _verify(bundle, keys))


def test_envelope_must_come_first(bundle: Path, keys: Any) -> None:
    _rewrite(bundle, list(reversed(_entries(bundle))))
    _refused(Reason.MALFORMED, lambda: _verify(bundle, keys))


@pytest.mark.parametrize("content", [b"", b"hello", np.arange(3000, dtype=np.uint8).tobytes()])
def test_not_an_archive_is_malformed(tmp_path: Path, keys: Any, content: bytes) -> None:
    path = tmp_path / "junk.etb"
    path.write_bytes(content)
    _refused(Reason.MALFORMED, lambda: _verify(path, keys))


def test_oversized_entry_is_refused(bundle: Path, keys: Any) -> None:
    _refused(Reason.TOO_LARGE, lambda: _verify(bundle, keys, limits=Limits(max_entry_bytes=100)))


def test_failed_unpack_leaves_nothing(tmp_path: Path, bundle: Path, keys: Any) -> None:
    entries = _entries(bundle)
    _rewrite(bundle, [entries[0], (entries[1][0], entries[1][1][:-1] + b"!")])
    before = sorted(p.name for p in tmp_path.iterdir())
    _refused(Reason.TAMPERED, lambda: unpack_bundle(
        bundle, tmp_path / "out", VerifyConfig(now=CREATED), keys=[keys[1]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_verify_dir_catches_changed_and_missing_files(tmp_path: Path, bundle: Path,
                                                      keys: Any) -> None:
    out = tmp_path / "out"
    unpack_bundle(bundle, out, VerifyConfig(now=CREATED), keys=[keys[1]])
    with (out / "model.onnx").open("r+b") as handle:
        handle.write(b"\x00")
    _refused(Reason.TAMPERED, lambda: verify_dir(out, keys=[keys[1]]))
    (out / "model.onnx").unlink()
    _refused(Reason.TRUNCATED, lambda: verify_dir(out, keys=[keys[1]]))
