"""The data contract, shared by the CLI and the Python API.

A dataset is either

* an ``.npz`` file (or a mapping of arrays) whose arrays are named after the model's inputs, the
  first axis indexing samples, with an optional ``labels`` array; or
* ``package.module:function``, a callable returning an iterable of ``{input_name: array}`` dicts,
  one per sample, with an optional ``labels`` key (for data that does not fit in memory).

Each sample is one run of the model: ``x[i:i+1]`` when the model's input keeps a sample (batch)
axis, and ``x[i]`` as it is when the model has none (its input rank is one less than the
array's, as with a stateful model fed a whole clip).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.model import Model, TensorSpec
from edgetune.errors import DataError

__all__ = ["BoundData", "Dataset", "Sample", "bind", "load_dataset", "resolve_callable"]

LABELS = "labels"
Feed = dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One run's inputs and, when the dataset has them, its label."""

    feed: Feed
    label: Any = None


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """Unvalidated data: arrays in memory, or a factory of per-sample dicts."""

    name: str
    arrays: Mapping[str, np.ndarray] | None = None
    factory: Callable[[], Iterable[Mapping[str, Any]]] | None = None


def load_dataset(spec: str | Path | Mapping[str, np.ndarray] | Dataset) -> Dataset:
    """Read a dataset spec: an ``.npz`` path, ``pkg.module:function``, or a mapping of arrays."""
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, Mapping):
        return Dataset(name="arrays", arrays={k: np.asarray(v) for k, v in spec.items()})
    text = str(spec)
    if text.endswith(".npz") or Path(text).exists():
        return _load_npz(Path(text))
    if ":" in text:
        return Dataset(name=text, factory=resolve_callable(text, "dataset"))
    raise DataError(
        f"dataset {text!r} is neither an existing .npz file nor 'package.module:function'; "
        "check the path or the callable's name"
    )


def _load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist; check the path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile, pickle and format errors
        raise DataError(
            f"cannot read {str(path)!r} as .npz ({type(exc).__name__}: {exc}); write it with "
            "numpy.savez(path, input_name=array, labels=array)"
        ) from None
    return Dataset(name=path.name, arrays=arrays)


def resolve_callable(text: str, what: str) -> Callable[..., Any]:
    """Import ``package.module:function``; a missing piece gets a one-line error."""
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise DataError(f"{what} {text!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(
            f"{what} {text!r}: cannot import module {module_name!r} ({exc}); check the name "
            "and that it is on PYTHONPATH"
        ) from None
    func = getattr(module, attr, None)
    if func is None or not callable(func):
        raise DataError(
            f"{what} {text!r}: module {module_name!r} has no callable {attr!r}; check the name"
        )
    return func


@dataclass(frozen=True, kw_only=True)
class _InputPlan:
    spec: TensorSpec
    keeps_sample_axis: bool


class BoundData:
    """A dataset checked against one model's inputs; iterate :meth:`samples` as often as needed."""

    def __init__(
        self,
        dataset: Dataset,
        plans: dict[str, _InputPlan],
        labels: np.ndarray | None,
    ) -> None:
        self.dataset = dataset
        self._plans = plans
        self._labels = labels

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def in_memory(self) -> bool:
        return self.dataset.arrays is not None

    @property
    def labels(self) -> np.ndarray | None:
        """Labels of an in-memory dataset (a streamed one gives them per :class:`Sample`)."""
        return self._labels

    def __len__(self) -> int:
        if self.dataset.arrays is None:
            raise TypeError("a streamed dataset has no length until it is read")
        return _sample_count(self.dataset.arrays, self._plans)

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        if self.dataset.arrays is not None:
            yield from self._array_samples(limit)
        else:
            yield from self._stream_samples(limit)

    def feeds(self, limit: int | None = None) -> Iterator[Feed]:
        return (s.feed for s in self.samples(limit))

    def _array_samples(self, limit: int | None) -> Iterator[Sample]:
        arrays = self.dataset.arrays or {}
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(n):
            feed = {
                name: arrays[name][i : i + 1] if plan.keeps_sample_axis else arrays[name][i]
                for name, plan in self._plans.items()
            }
            label = None if self._labels is None else self._labels[i]
            yield Sample(feed=feed, label=label)

    def _stream_samples(self, limit: int | None) -> Iterator[Sample]:
        assert self.dataset.factory is not None  # guaranteed by bind(); not user input
        count = 0
        for index, item in enumerate(_call_factory(self.dataset)):
            if limit is not None and count >= limit:
                return
            yield _check_stream_item(item, index, self._plans, self.dataset.name)
            count += 1
        if count == 0:
            raise DataError(f"dataset {self.dataset.name!r} yielded no samples; give it data")

    def split(self, first: int) -> tuple[BoundData, BoundData]:
        """The first ``first`` samples and the rest, as two in-memory datasets."""
        arrays = self.materialize()
        head = {k: v[:first] for k, v in arrays.items()}
        tail = {k: v[first:] for k, v in arrays.items()}
        return (self._with_arrays(head, "head"), self._with_arrays(tail, "tail"))

    def materialize(self, limit: int | None = None) -> dict[str, np.ndarray]:
        """All (or the first ``limit``) samples as arrays with a sample axis, plus labels."""
        samples = list(self.samples(limit))
        out: dict[str, np.ndarray] = {}
        for name, plan in self._plans.items():
            parts = [s.feed[name] for s in samples]
            out[name] = np.concatenate(parts) if plan.keeps_sample_axis else np.stack(parts)
        if samples and samples[0].label is not None:
            out[LABELS] = np.asarray([s.label for s in samples])
        return out

    def _with_arrays(self, arrays: dict[str, np.ndarray], part: str) -> BoundData:
        labels = arrays.pop(LABELS, None)
        dataset = Dataset(name=f"{self.name}[{part}]", arrays=arrays)
        return BoundData(dataset, self._plans, labels)


def _call_factory(dataset: Dataset) -> Iterable[Mapping[str, Any]]:
    assert dataset.factory is not None
    try:
        items = dataset.factory()
    except Exception as exc:  # user code
        raise DataError(
            f"dataset callable {dataset.name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(items, Iterable):
        raise DataError(
            f"dataset callable {dataset.name!r} returned {type(items).__name__}; it must return "
            "an iterable of {input_name: array} dicts"
        )
    return items


def bind(
    dataset: BoundData | Dataset | str | Path | Mapping[str, np.ndarray], model: Model
) -> BoundData:
    """Check ``dataset`` against ``model``'s inputs and return something to iterate."""
    if isinstance(dataset, BoundData):
        return dataset
    dataset = load_dataset(dataset)
    specs = {spec.name: spec for spec in model.inputs}
    if dataset.arrays is None:
        plans = {
            name: _InputPlan(spec=spec, keeps_sample_axis=True) for name, spec in specs.items()
        }
        return BoundData(dataset, plans, None)
    arrays = dict(dataset.arrays)
    labels = arrays.pop(LABELS, None)
    _check_names(set(arrays), specs, dataset.name)
    plans = {name: _plan_input(arrays[name], specs[name], dataset.name) for name in specs}
    n = _sample_count(arrays, plans)
    for name in specs:
        _check_finite(arrays[name], name, dataset.name)
    _check_labels(labels, n, dataset.name)
    return BoundData(Dataset(name=dataset.name, arrays=arrays), plans, labels)


def _check_names(given: set[str], specs: dict[str, TensorSpec], where: str) -> None:
    missing = sorted(set(specs) - given)
    extra = sorted(given - set(specs))
    expected = ", ".join(s.describe() for s in specs.values())
    if missing:
        raise DataError(
            f"dataset {where!r} lacks array(s) {missing} for the model input(s); the model "
            f"expects {expected} (arrays are named after inputs, plus optional 'labels')"
        )
    if extra:
        raise DataError(
            f"dataset {where!r} has array(s) {extra} that are not model inputs; the model "
            f"expects {expected}; rename or remove them"
        )


def _plan_input(array: np.ndarray, spec: TensorSpec, where: str) -> _InputPlan:
    if array.dtype != spec.dtype:
        raise DataError(
            f"dataset {where!r}: array {spec.name!r} has dtype {array.dtype}, the model input "
            f"needs {spec.dtype}; convert it with array.astype(np.{spec.dtype.name})"
        )
    if spec.shape is None:
        return _InputPlan(spec=spec, keeps_sample_axis=True)
    model_rank = len(spec.shape)
    if array.ndim == model_rank:
        _check_dims(array.shape[1:], spec.shape[1:], spec, where)
        return _InputPlan(spec=spec, keeps_sample_axis=True)
    if array.ndim == model_rank + 1:
        _check_dims(array.shape[1:], spec.shape, spec, where)
        return _InputPlan(spec=spec, keeps_sample_axis=False)
    raise DataError(
        f"dataset {where!r}: array {spec.name!r} has shape {array.shape}, which does not fit "
        f"the model input {spec.describe()}; the first axis must index samples"
    )


def _check_dims(
    given: tuple[int, ...], wanted: tuple[Any, ...], spec: TensorSpec, where: str
) -> None:
    for got, want in zip(given, wanted, strict=True):
        if isinstance(want, int) and want > 0 and got != want:
            raise DataError(
                f"dataset {where!r}: array {spec.name!r} has per-sample shape {given}, the model "
                f"input is {spec.describe()}; reshape or resize the data to match"
            )


def _sample_count(arrays: Mapping[str, np.ndarray], plans: dict[str, _InputPlan]) -> int:
    counts = {name: int(arrays[name].shape[0]) if arrays[name].ndim else 0 for name in plans}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"dataset arrays disagree on the number of samples: {counts}; the first axis of "
            "every array must have the same length"
        )
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise DataError("dataset is empty (0 samples); give at least one sample")
    return n


def _check_finite(array: np.ndarray, name: str, where: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(
            f"dataset {where!r}: array {name!r} has {bad} NaN or Inf value(s); clean or drop "
            "those samples before calibrating"
        )


def _check_labels(labels: np.ndarray | None, n: int, where: str) -> None:
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
        got = 0 if labels.ndim == 0 else labels.shape[0]
        raise DataError(
            f"dataset {where!r}: 'labels' has {got} entries but the inputs have {n} samples; "
            "give one label per sample"
        )


def _check_stream_item(
    item: Mapping[str, Any], index: int, plans: dict[str, _InputPlan], where: str
) -> Sample:
    if not isinstance(item, Mapping):
        raise DataError(
            f"dataset {where!r}: item {index} is a {type(item).__name__}; each item must be a "
            "dict of {input_name: array}"
        )
    arrays = {k: np.asarray(v) for k, v in item.items() if k != LABELS}
    specs = {name: plan.spec for name, plan in plans.items()}
    _check_names(set(arrays), specs, f"{where}[{index}]")
    feed = {name: _stream_array(arrays[name], specs[name], f"{where}[{index}]") for name in specs}
    return Sample(feed=feed, label=item.get(LABELS))


def _stream_array(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    if array.dtype != spec.dtype:
        raise DataError(
            f"dataset {where!r}: {spec.name!r} has dtype {array.dtype}, the model input needs "
            f"{spec.dtype}; convert it with array.astype(np.{spec.dtype.name})"
        )
    _check_finite(array, spec.name, where)
    rank = spec.rank
    if rank is not None and array.ndim == rank - 1:
        array = array[np.newaxis]
    if rank is not None and array.ndim != rank:
        raise DataError(
            f"dataset {where!r}: {spec.name!r} has shape {array.shape}, the model input is "
            f"{spec.describe()}; give one sample per item"
        )
    return array
