from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgetune.core.data import bind, load_dataset
from edgetune.errors import DataError
from edgetune.testing.tiny import tiny_cnn, tiny_mlp


def test_npz_samples_keep_the_batch_axis(tmp_path: Path) -> None:
    x = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)
    np.savez(tmp_path / "d.npz", x=x, labels=np.array([0, 1, 2]))
    bound = bind(tmp_path / "d.npz", tiny_mlp())
    samples = list(bound.samples())
    assert len(bound) == 3
    assert samples[1].feed["x"].shape == (1, 16)
    np.testing.assert_array_equal(samples[1].feed["x"][0], x[1])
    assert samples[2].label == 2


def test_model_without_sample_axis_gets_whole_items() -> None:
    # arrays one rank above the model input: each x[i] is fed as it is (like a whole clip)
    clips = np.zeros((4, 5, 16), dtype=np.float32)
    bound = bind({"x": clips}, tiny_mlp())
    assert [s.feed["x"].shape for s in bound.samples()] == [(5, 16)] * 4


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros((2, 16), np.float32)}, "lacks array"),
        ({"x": np.zeros((2, 16), np.float32), "z": np.zeros(2)}, "not model inputs"),
        ({"x": np.zeros((2, 16), np.float64)}, "astype(np.float32)"),
        ({"x": np.zeros((2, 15), np.float32)}, "per-sample shape"),
        ({"x": np.zeros((2,), np.float32)}, "does not fit"),
        ({"x": np.zeros((0, 16), np.float32)}, "empty"),
        ({"x": np.full((2, 16), np.nan, np.float32)}, "NaN or Inf"),
        ({"x": np.zeros((2, 16), np.float32), "labels": np.zeros(3)}, "one label per sample"),
    ],
)
def test_bad_arrays_get_one_clear_line(arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataError) as info:
        bind(arrays, tiny_mlp())
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_npz(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing.npz")


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "mydata.py").write_text(
        textwrap.dedent("""
        import numpy as np
        def samples():
            for i in range(5):
                yield {"input": np.full((1, 8, 8), i, np.float32), "labels": i % 4}
        def broken():
            yield {"input": np.zeros((1, 8, 8), np.float64)}
        def not_iterable():
            return 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mydata"
    sys.modules.pop("mydata", None)


def test_callable_dataset_streams_and_adds_batch_axis(data_module: str) -> None:
    bound = bind(f"{data_module}:samples", tiny_cnn())
    samples = list(bound.samples())
    assert [s.feed["input"].shape for s in samples] == [(1, 1, 8, 8)] * 5
    assert [s.label for s in samples] == [0, 1, 2, 3, 0]
    arrays = bound.materialize(limit=3)
    assert arrays["input"].shape == (3, 1, 8, 8) and list(arrays["labels"]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mydata:missing", "has no callable"),
        ("nosuchmodule_xyz:fn", "cannot import"),
        ("mydata:broken", "float64"),
        ("mydata:not_iterable", "must return an iterable"),
    ],
)
def test_bad_callable_datasets(data_module: str, spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        list(bind(spec, tiny_cnn()).samples())
