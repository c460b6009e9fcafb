from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data, tiny_mlp, tiny_mlp_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def cnn_files(tmp_path: Path) -> dict[str, Path]:
    """A tiny CNN with calibration and evaluation data on disk."""
    paths = {"model": tmp_path / "cnn.onnx", "calib": tmp_path / "calib.npz", "eval": tmp_path / "eval.npz"}
    tiny_cnn().save(paths["model"])
    np.savez(paths["calib"], **tiny_cnn_data(96))
    np.savez(paths["eval"], **tiny_cnn_data(40, seed=7))
    return paths


@pytest.fixture
def mlp():
    return tiny_mlp()


@pytest.fixture
def mlp_data():
    return tiny_mlp_data(64)
