"""edgetune keygen and edgetune bundle create / verify / diff / patch, in process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from edgetune.cli import cli
from edgetune.testing.tiny import tiny_mlp


def _run(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _models(tmp_path: Path) -> tuple[Path, Path]:
    from onnx import numpy_helper

    base = tiny_mlp(features=64, hidden=128)
    base.save(tmp_path / "v1.onnx")
    proto = base.copy_proto()
    for tensor in proto.graph.initializer:
        if tensor.name == "w2":
            tensor.CopyFrom(numpy_helper.from_array(np.ones((128, 4), np.float32), "w2"))
    base.with_proto(proto).save(tmp_path / "v2.onnx")
    return tmp_path / "v1.onnx", tmp_path / "v2.onnx"


def test_keygen_create_verify_diff_patch(tmp_path: Path) -> None:
    v1, v2 = _models(tmp_path)
    assert _run("keygen", "-o", tmp_path / "fleet").exit_code == 0
    for model, version in ((v1, "1.0.0"), (v2, "1.1.0")):
        made = _run("bundle", "create", model, "--version", version, "--sign",
                    tmp_path / "fleet.key", "-o", tmp_path / f"{version}.etb")
        assert made.exit_code == 0 and "wrote" in made.output
    verified = _run("bundle", "verify", tmp_path / "1.1.0.etb", "--key", tmp_path / "fleet.pub",
                    "--min-version", "1.0.0", "--check-runtime", "--json")
    assert verified.exit_code == 0 and json.loads(verified.output)["version"] == "1.1.0"
    diffed = _run("bundle", "diff", tmp_path / "1.0.0.etb", tmp_path / "1.1.0.etb", "-o",
                  tmp_path / "d.etd", "--json")
    stats = json.loads(diffed.output)
    assert stats["tensors_changed"] == 1 and stats["delta_bytes"] < stats["full_bytes"]
    patched = _run("bundle", "patch", tmp_path / "1.0.0.etb", tmp_path / "d.etd", "--key",
                   tmp_path / "fleet.pub")
    assert patched.exit_code == 0 and "identical" in patched.output
    assert (tmp_path / "d.etb").read_bytes() == (tmp_path / "1.1.0.etb").read_bytes()


def test_verify_refusals_exit_1_with_one_line(tmp_path: Path) -> None:
    v1, _ = _models(tmp_path)
    _run("keygen", "-o", tmp_path / "a")
    _run("keygen", "-o", tmp_path / "b", "--algorithm", "ecdsa-p256")
    _run("bundle", "create", v1, "--version", "2.0", "--sign", tmp_path / "a.key", "-o",
         tmp_path / "m.etb")
    wrong_key = _run("bundle", "verify", tmp_path / "m.etb", "--key", tmp_path / "b.pub")
    assert wrong_key.exit_code == 1
    assert wrong_key.output.startswith("error: bad-signature:")
    older = _run("bundle", "verify", tmp_path / "m.etb", "--key", tmp_path / "a.pub",
                 "--min-version", "3")
    assert older.exit_code == 1 and "rollback" in older.output
    bad_version = _run("bundle", "create", v1, "--version", "two", "--sign", tmp_path / "a.key",
                       "-o", tmp_path / "x.etb")
    assert bad_version.exit_code == 2 and not (tmp_path / "x.etb").exists()


def test_keygen_will_not_overwrite(tmp_path: Path) -> None:
    assert _run("keygen", "-o", tmp_path / "k").exit_code == 0
    again = _run("keygen", "-o", tmp_path / "k")
    assert again.exit_code == 1 and "already exists" in again.output
    assert _run("keygen", "-o", tmp_path / "k", "--force").exit_code == 0
