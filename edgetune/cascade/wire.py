"""What goes over HTTP: request bodies checked against the model's inputs, and arrays encoded.

A request body is one of

* ``application/json``: ``{"inputs": {"NAME": nested lists}}``; a value may also be
  ``{"data": nested lists, "dtype": "float32"}`` to state its type;
* ``application/x-npy``: one ``numpy.save`` array, for a single-input model (or name the input
  in an ``X-Input-Name`` header);
* ``application/x-npz``: ``numpy.savez`` with arrays named after the inputs.

Every array is checked before it reaches the model: names, element type, rank, fixed
dimensions, batch size, finite values. A failure is a :class:`RequestError` carrying the 4xx
status and a one-line message saying what is wrong and what the model expects.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np

from edgetune.core.model import TensorSpec

__all__ = [
    "JSON",
    "NPY",
    "NPZ",
    "RequestError",
    "decode_npz",
    "encode_npz",
    "parse_feed",
    "read_capped",
]

JSON, NPY, NPZ = "application/json", "application/x-npy", "application/x-npz"


class RequestError(Exception):
    """A bad request: ``status`` is the HTTP status, the message says how to fix it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_capped(
    headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int
) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before or while reading it."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestError(
                413,
                f"request body is {declared} bytes; the limit is {limit} "
                "bytes (raise it with --max-body-mb, or send fewer samples)",
            )
    parts, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413,
                f"request body exceeds the limit of {limit} bytes (raise it "
                "with --max-body-mb, or send fewer samples)",
            )
        parts.append(chunk)
    return b"".join(parts)


def _expects(specs: list[TensorSpec]) -> str:
    return ", ".join(s.describe() for s in specs)


def _from_json(body: bytes, specs: list[TensorSpec]) -> dict[str, tuple[Any, str | None]]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(
            400,
            f'request body is not valid JSON ({exc}); send {{"inputs": {{"NAME": nested lists}}}}',
        ) from None
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(inputs, dict):
        raise RequestError(
            422,
            'JSON body must be {"inputs": {"NAME": nested lists}}; the model '
            f"takes {_expects(specs)}",
        )
    out: dict[str, tuple[Any, str | None]] = {}
    for name, value in inputs.items():
        if isinstance(value, dict):
            out[name] = (value.get("data"), value.get("dtype"))
        else:
            out[name] = (value, None)
    return out


def _load_npy(body: bytes, what: str) -> Any:
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError, zipfile errors
        raise RequestError(
            400,
            f"request body is not a valid {what} file ({type(exc).__name__}); "
            f"write it with numpy.{'save' if what == '.npy' else 'savez'}",
        ) from None


def decode_npz(body: bytes) -> dict[str, np.ndarray]:
    loaded = _load_npy(body, ".npz")
    if not hasattr(loaded, "files"):
        raise RequestError(
            400,
            "request body is a .npy array, not a .npz archive; send "
            "Content-Type: application/x-npy instead",
        )
    with loaded as npz:
        return {name: npz[name] for name in npz.files}


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buffer.getvalue()


def _from_npy(body: bytes, specs: list[TensorSpec], name: str | None) -> dict[str, np.ndarray]:
    if name is None and len(specs) != 1:
        raise RequestError(
            422,
            f"a .npy body carries one array but the model takes "
            f"{_expects(specs)}; send .npz or name it in X-Input-Name",
        )
    array = _load_npy(body, ".npy")
    if not isinstance(array, np.ndarray):
        raise RequestError(
            400, "request body is a .npz archive; send Content-Type: application/x-npz"
        )
    return {name or specs[0].name: array}


def _raw_arrays(
    body: bytes, content_type: str, specs: list[TensorSpec], input_name: str | None
) -> dict[str, tuple[Any, str | None]]:
    kind = content_type.split(";")[0].strip().lower()
    if kind in (JSON, ""):
        return _from_json(body, specs)
    if kind in (NPY, "application/octet-stream"):
        return {k: (v, str(v.dtype)) for k, v in _from_npy(body, specs, input_name).items()}
    if kind == NPZ:
        return {k: (v, str(v.dtype)) for k, v in decode_npz(body).items()}
    raise RequestError(415, f"unsupported Content-Type {kind!r}; send {JSON}, {NPY} or {NPZ}")


def parse_feed(
    body: bytes,
    content_type: str,
    specs: list[TensorSpec],
    *,
    max_batch: int,
    input_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Decode and check a request body against the model's inputs; raise RequestError."""
    raw = _raw_arrays(body, content_type, specs, input_name)
    wanted = {s.name for s in specs}
    missing, extra = sorted(wanted - set(raw)), sorted(set(raw) - wanted)
    if missing or extra:
        raise RequestError(
            422,
            f"inputs {sorted(raw)} do not match the model's: missing "
            f"{missing}, unexpected {extra}; the model takes {_expects(specs)}",
        )
    feed = {s.name: _checked(raw[s.name][0], raw[s.name][1], s) for s in specs}
    _check_batch(feed, max_batch)
    return feed


def _as_array(value: Any, spec: TensorSpec) -> np.ndarray:
    if value is None:
        raise RequestError(
            422, f"input {spec.name!r} has no data; give nested lists shaped like {spec.describe()}"
        )
    try:
        return np.asarray(value)
    except (ValueError, TypeError):
        raise RequestError(
            422,
            f"input {spec.name!r} is ragged (rows of different lengths); "
            f"give a rectangular array shaped like {spec.describe()}",
        ) from None


def _checked(value: Any, dtype: str | None, spec: TensorSpec) -> np.ndarray:
    array = _as_array(value, spec)
    if dtype is not None:
        _check_stated_dtype(dtype, spec)
        array = array.astype(spec.dtype) if array.dtype != spec.dtype else array
    else:
        array = _cast_json(array, spec)
    array = _check_shape(array, spec)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise RequestError(422, f"input {spec.name!r} contains NaN or Inf; send finite numbers")
    return np.ascontiguousarray(array)


def _check_stated_dtype(dtype: str, spec: TensorSpec) -> None:
    try:
        stated = np.dtype(dtype)
    except TypeError:
        raise RequestError(
            422, f"input {spec.name!r}: unknown dtype {dtype!r}; the model needs {spec.dtype}"
        ) from None
    if stated != spec.dtype:
        raise RequestError(
            422,
            f"input {spec.name!r} has dtype {stated}; the model needs "
            f"{spec.dtype}; convert it before sending",
        )


def _cast_json(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """JSON numbers carry no width: ints may become floats, floats may not become ints."""
    kind, want = array.dtype.kind, spec.dtype.kind
    if kind == want or (kind in "iu" and want in "iuf"):
        return array.astype(spec.dtype, copy=False)
    got = {"f": "floating-point numbers", "b": "booleans", "U": "strings"}.get(kind, "mixed values")
    raise RequestError(
        422, f"input {spec.name!r} holds {got}; the model needs {spec.dtype} ({spec.describe()})"
    )


def _check_shape(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.shape is None:
        return array
    if array.ndim == len(spec.shape) - 1:
        array = array[np.newaxis]
    if array.ndim != len(spec.shape):
        raise RequestError(
            422,
            f"input {spec.name!r} has shape {list(array.shape)}; the model takes {spec.describe()}",
        )
    for got, want in zip(array.shape, spec.shape, strict=True):
        if isinstance(want, int) and want > 0 and got != want:
            raise RequestError(
                422,
                f"input {spec.name!r} has shape {list(array.shape)}; the "
                f"model takes {spec.describe()}",
            )
    return array


def _check_batch(feed: dict[str, np.ndarray], max_batch: int) -> None:
    sizes = {name: a.shape[0] for name, a in feed.items() if a.ndim}
    if len(set(sizes.values())) > 1:
        raise RequestError(
            422,
            f"inputs disagree on the batch size: {sizes}; send the same "
            "number of samples for every input",
        )
    batch = next(iter(sizes.values()), 1)
    if batch == 0:
        raise RequestError(422, "the request holds 0 samples; send at least one")
    if batch > max_batch:
        raise RequestError(
            413,
            f"the request holds {batch} samples; the limit is {max_batch} "
            "per request (--max-batch); split it",
        )
