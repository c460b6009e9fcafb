"""ONNX -> TFLite conversion with onnx2tf, run in a child process and cached on disk.

Why a child process: onnx2tf imports TensorFlow (about a gigabyte of memory and seconds of
import), prints freely, and changes global TensorFlow state; isolating it keeps the benchmark
process's memory, timing and logs clean. Why a cache: conversion takes seconds to minutes and is
an ahead-of-time step, not part of the cold start a deployed app sees; the cache key covers the
model bytes, the static shapes, the variant, the calibration data and the converter version.

Layout: onnx2tf turns NCHW graphs into NHWC ones, so a 4-D image input ``[N, C, H, W]`` becomes
``[N, H, W, C]``; :mod:`edgetune.runtimes.litert` transposes feeds to match.

Run as ``python -m edgetune.runtimes.litert_convert`` with a JSON request on stdin.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.fileio import atomic_path
from edgetune.errors import MissingExtraError, RuntimeBackendError

__all__ = ["Conversion", "cache_dir", "convert"]

log = logging.getLogger(__name__)

CONVERT_TIMEOUT_S = 1800.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")
_NHWC = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


@dataclass(frozen=True, kw_only=True)
class Conversion:
    path: Path
    shapes: dict[str, tuple[int, ...]]
    seconds: float
    cached: bool
    tool: str


def cache_dir() -> Path:
    """``$EDGETUNE_CACHE/litert``, else ``$XDG_CACHE_HOME/edgetune/litert``, else ``~/.cache``."""
    root = os.environ.get("EDGETUNE_CACHE")
    if root:
        return Path(root) / "litert"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edgetune" / "litert"


def converter_version() -> str:
    from importlib import metadata

    try:
        return f"onnx2tf {metadata.version('onnx2tf')}, tensorflow {_tf_version()}"
    except metadata.PackageNotFoundError:
        raise MissingExtraError("onnx2tf", "litert", "converting ONNX to LiteRT") from None


def _tf_version() -> str:
    from importlib import metadata

    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise MissingExtraError("tensorflow", "litert", "converting ONNX to LiteRT (onnx2tf)")


def convert(
    model_bytes: bytes,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    calibration: Mapping[str, np.ndarray] | None = None,
) -> Conversion:
    """The converted ``.tflite`` for these shapes (float32, or INT8 inside when calibrated)."""
    tool = converter_version()
    target = cache_dir() / f"{_key(model_bytes, shapes, calibration, tool)}.tflite"
    if target.is_file():
        return Conversion(path=target, shapes=dict(shapes), seconds=0.0, cached=True, tool=tool)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetune-onnx2tf-") as tmp:
        produced = _run_child(Path(tmp), model_bytes, shapes, calibration)
        with atomic_path(target, "converted LiteRT model") as out:
            shutil.copyfile(produced, out)
    seconds = time.perf_counter() - start
    return Conversion(path=target, shapes=dict(shapes), seconds=seconds, cached=False, tool=tool)


def _key(
    model_bytes: bytes,
    shapes: Mapping[str, tuple[int, ...]],
    calibration: Mapping[str, np.ndarray] | None,
    tool: str,
) -> str:
    h = hashlib.sha256(model_bytes)
    h.update(json.dumps({k: list(v) for k, v in sorted(shapes.items())}).encode())
    h.update(tool.encode())
    for name in sorted(calibration or {}):
        h.update(name.encode() + np.ascontiguousarray((calibration or {})[name]).tobytes())
    return ("int8-" if calibration else "fp32-") + h.hexdigest()[:32]


def _run_child(
    tmp: Path,
    model_bytes: bytes,
    shapes: Mapping[str, tuple[int, ...]],
    calibration: Mapping[str, np.ndarray] | None,
) -> Path:
    (tmp / "model.onnx").write_bytes(model_bytes)
    calib_files: dict[str, str] = {}
    for name, array in (calibration or {}).items():
        calib_files[name] = str(tmp / f"calib_{len(calib_files)}.npy")
        np.save(calib_files[name], to_converted_layout(array))
    request = {
        "model": str(tmp / "model.onnx"),
        "out": str(tmp / "out"),
        "shapes": {k: list(v) for k, v in shapes.items()},
        "calibration": calib_files,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "edgetune.runtimes.litert_convert"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_S,
        env=_quiet_env(),
        check=False,
    )
    produced = _find_output(tmp / "out", bool(calibration))
    if proc.returncode != 0 or produced is None:
        raise RuntimeBackendError(
            f"onnx2tf could not convert the model to LiteRT: {_reason(proc.stderr + proc.stdout)}; "
            "simplify the model (onnxsim) or use another runtime"
        )
    return produced


def to_converted_layout(array: np.ndarray) -> np.ndarray:
    """NCHW-style arrays as onnx2tf's NHWC-style inputs (rank 3-5); other ranks unchanged."""
    perm = _NHWC.get(array.ndim)
    return np.ascontiguousarray(array.transpose(perm)) if perm else array


def _quiet_env() -> dict[str, str]:
    """Quiet TensorFlow, no GPU, and this interpreter's scripts first on PATH: onnx2tf runs
    the ``onnxsim`` command (when installed) to simplify the graph before converting."""
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", TF_ENABLE_ONEDNN_OPTS="0")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _find_output(out: Path, int8: bool) -> Path | None:
    suffix = "_integer_quant.tflite" if int8 else "_float32.tflite"
    found = [
        p for p in out.glob(f"*{suffix}") if "full_integer" not in p.name and "int16" not in p.name
    ]
    return found[0] if found else None


def _reason(text: str) -> str:
    """The converter's own explanation: the last exception line and the ONNX node it was at."""
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    exceptions = [line for line in lines if _EXCEPTION.match(line)]
    detail = [line for line in lines if "Dimensions must be" in line or "Found:" in line]
    nodes = [line.split(":", 2)[-1].strip() for line in lines if "onnx_op_name:" in line]
    chosen = (detail or exceptions or lines or ["no output"])[-1]
    where = f" (at ONNX node {nodes[-1]})" if nodes else ""
    return (chosen[:240] + where).replace("\n", " ")


def _child_main() -> int:
    """In the child: read the request, run onnx2tf, leave the .tflite files in ``out``."""
    request = json.loads(sys.stdin.read())
    import onnx2tf

    options: dict[str, Any] = {
        "input_onnx_file_path": request["model"],
        "output_folder_path": request["out"],
        "non_verbose": True,
        "overwrite_input_shape": [
            f"{k}:{','.join(map(str, v))}" for k, v in request["shapes"].items()
        ],
    }
    if request["calibration"]:
        options.update(
            output_integer_quantized_tflite=True,
            quant_type="per-channel",
            custom_input_op_name_np_data_path=[
                [name, path, [0.0], [1.0]] for name, path in request["calibration"].items()
            ],
        )
    onnx2tf.convert(**options)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
