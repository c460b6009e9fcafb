from __future__ import annotations

import subprocess
import sys

import edgetune


def test_all_names_resolve() -> None:
    for name in edgetune.__all__:
        assert getattr(edgetune, name) is not None, name


def test_import_is_light() -> None:
    heavy = "('onnx', 'onnxruntime', 'torch')"
    code = f"import sys, edgetune; print(any(m in sys.modules for m in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
