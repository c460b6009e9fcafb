"""Tensor-level deltas: only what changed travels, and the patch rebuilds the signed bundle."""

from __future__ import annotations

import json
import tarfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetune.bundle.archive import write_archive
from edgetune.bundle.delta import diff_bundles, onnx_pieces, patch_bundle
from edgetune.bundle.errors import BundleError, Reason
from edgetune.bundle.pack import BundleConfig, create_bundle, file_sha256
from edgetune.bundle.sign import load_private_key, load_public_key, write_keypair
from edgetune.core.model import Model
from edgetune.testing.tiny import tiny_mlp


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    key_path, pub_path = write_keypair(tmp_path / "fleet")
    return load_private_key(key_path), load_public_key(pub_path)


def _with_tensors(model: Model, **arrays: np.ndarray) -> Model:
    from onnx import numpy_helper

    proto = model.copy_proto()
    for tensor in proto.graph.initializer:
        if tensor.name in arrays:
            tensor.CopyFrom(numpy_helper.from_array(arrays[tensor.name], tensor.name))
    return model.with_proto(proto)


def _bundle(tmp_path: Path, keys: Any, model: Model, version: str) -> Path:
    folder = tmp_path / version
    folder.mkdir()
    model.save(folder / "model.onnx")
    return create_bundle(folder / "model.onnx", BundleConfig(version=version), key=keys[0],
                         output=tmp_path / f"{version}.etb").path


@pytest.fixture
def pair(tmp_path: Path, keys: Any) -> tuple[Path, Path]:
    """A bundle and its update with only the classifier (w2, b2) retrained."""
    base = tiny_mlp(features=128, hidden=256)
    rng = np.random.default_rng(3)
    update = _with_tensors(base, w2=rng.normal(size=(256, 4)).astype(np.float32),
                           b2=rng.normal(size=4).astype(np.float32))
    return _bundle(tmp_path, keys, base, "1.0.0"), _bundle(tmp_path, keys, update, "1.1.0")


def test_classifier_update_sends_only_the_classifier(tmp_path: Path, pair: Any, keys: Any) -> None:
    old, new = pair
    delta = diff_bundles(old, new, output=tmp_path / "d.etd")
    assert delta.stats["changed"] == ["b2", "w2"]
    assert delta.stats["tensors_changed"] == 2 and delta.stats["tensors"] == 4
    assert delta.ratio < 0.15  # w1 (128 KiB) stays on the device
    rebuilt = patch_bundle(old, delta.path, output=tmp_path / "new.etb", keys=[keys[1]])
    assert rebuilt.signature_checked and rebuilt.manifest.version == "1.1.0"
    assert (tmp_path / "new.etb").read_bytes() == new.read_bytes()


def test_a_new_graph_still_patches_exactly(tmp_path: Path, keys: Any) -> None:
    old = _bundle(tmp_path, keys, tiny_mlp(features=64), "1.0.0")
    new = _bundle(tmp_path, keys, tiny_mlp(features=64, hidden=48, seed=5), "2.0.0")
    delta = diff_bundles(old, new, output=tmp_path / "d.etd")
    assert delta.stats["tensors_changed"] == 4
    patch_bundle(old, delta.path, output=tmp_path / "new.etb", keys=[keys[1]])
    assert file_sha256(tmp_path / "new.etb") == file_sha256(new)


def test_patch_refuses_another_base(tmp_path: Path, pair: Any) -> None:
    old, new = pair
    delta = diff_bundles(old, new, output=tmp_path / "d.etd")
    with pytest.raises(BundleError) as err:
        patch_bundle(new, delta.path, output=tmp_path / "x.etb")
    assert err.value.reason is Reason.WRONG_BASE
    assert not (tmp_path / "x.etb").exists()


def _delta_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    with tarfile.open(path) as tar:
        plan = json.loads(tar.extractfile("delta.json").read())  # type: ignore[union-attr]
        data = tar.extractfile("data.bin").read()  # type: ignore[union-attr]
    return plan, data


def _write_delta(path: Path, plan: Any, data: bytes) -> Path:
    with path.open("wb") as out:
        write_archive(out, [("delta.json", json.dumps(plan).encode()), ("data.bin", data)])
    return path


def test_corrupted_delta_data_is_caught(tmp_path: Path, pair: Any) -> None:
    old, new = pair
    plan, data = _delta_parts(diff_bundles(old, new, output=tmp_path / "d.etd").path)
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 1
    bad = _write_delta(tmp_path / "bad.etd", plan, bytes(corrupt))
    with pytest.raises(BundleError) as err:
        patch_bundle(old, bad, output=tmp_path / "x.etb")
    assert err.value.reason is Reason.TAMPERED and not (tmp_path / "x.etb").exists()


@pytest.mark.parametrize("mutate", [
    lambda p: p.update(schema="other/1"),
    lambda p: p["ops"].append([0, 10**12, 5]),
    lambda p: p["ops"].append([7, 0, 1]),
    lambda p: p["ops"].__setitem__(0, [1, -1, 5]),
    lambda p: p["ops"].__setitem__(0, "copy"),
    lambda p: p["target"].update(size=1),
    lambda p: p.pop("ops"),
])
def test_malformed_delta_plans_are_refused(tmp_path: Path, pair: Any, mutate: Any) -> None:
    old, new = pair
    plan, data = _delta_parts(diff_bundles(old, new, output=tmp_path / "d.etd").path)
    mutate(plan)
    bad = _write_delta(tmp_path / "bad.etd", plan, data)
    with pytest.raises(BundleError) as err:
        patch_bundle(old, bad, output=tmp_path / "x.etb")
    assert err.value.reason is Reason.MALFORMED


def test_forged_delta_to_an_unsigned_bundle_fails_verification(tmp_path: Path, pair: Any,
                                                               keys: Any) -> None:
    old, _ = pair
    attacker_key, _ = write_keypair(tmp_path / "attacker")
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    tiny_mlp(features=128, hidden=256, seed=9).save(evil_dir / "model.onnx")
    evil = create_bundle(evil_dir / "model.onnx", BundleConfig(version="9.0.0"),
                         key=load_private_key(attacker_key), output=tmp_path / "evil.etb").path
    forged = diff_bundles(old, evil, output=tmp_path / "forged.etd")
    with pytest.raises(BundleError) as err:
        patch_bundle(old, forged.path, output=tmp_path / "x.etb", keys=[keys[1]])
    assert err.value.reason is Reason.BAD_SIGNATURE and not (tmp_path / "x.etb").exists()


def test_missing_data_and_non_deltas_are_refused(tmp_path: Path, pair: Any) -> None:
    old, new = pair
    plan, _ = _delta_parts(diff_bundles(old, new, output=tmp_path / "d.etd").path)
    only_plan = tmp_path / "plan-only.etd"
    with only_plan.open("wb") as out:
        write_archive(out, [("delta.json", json.dumps(plan).encode())])
    for path, reason in ((only_plan, Reason.TRUNCATED), (old, Reason.MALFORMED)):
        with pytest.raises(BundleError) as err:
            patch_bundle(old, path, output=tmp_path / "x.etb")
        assert err.value.reason is reason


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=400))
def test_protobuf_pieces_cover_any_bytes_exactly(data: bytes) -> None:
    pieces = onnx_pieces(data, 0, len(data))
    assert [s for s, _ in pieces][:1] == ([0] if data else [])
    assert all(a[1] == b[0] for a, b in pairwise(pieces))
    assert (pieces[-1][1] if pieces else 0) == len(data)


def test_model_pieces_split_every_initializer() -> None:
    data = tiny_mlp().to_bytes()
    pieces = onnx_pieces(data, 0, len(data))
    blobs = [data[s:e] for s, e in pieces]
    assert b"".join(blobs) == data
    assert sum(1 for b in blobs if b"w1" in b and len(b) > 16 * 32 * 4) == 1
