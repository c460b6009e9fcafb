"""The large model behind a remote ``edgetune serve``: one escalation call with a deadline.

The cascade posts the escalated samples as ``.npz`` and asks for ``.npz`` back. Any failure
(deadline passed, connection refused, an HTTP error status, a malformed answer) becomes a
:class:`RemoteFailure` whose ``reason`` labels the metric; the caller answers locally. After
``breaker_failures`` failures in a row a circuit breaker skips the remote for
``breaker_cooldown_s`` seconds, so a dead remote does not add its timeout to every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from edgetune.cascade._deps import serve_module
from edgetune.cascade.wire import NPZ, RequestError, decode_npz, encode_npz

__all__ = ["RemoteFailure", "RemoteLarge"]

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


def _batch(feed: Feed) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


class RemoteFailure(Exception):
    """An escalation call that did not give an answer; ``reason`` labels the metric."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteLarge:
    """The large model behind a remote ``edgetune serve``, with a deadline and a breaker."""

    def __init__(
        self,
        url: str,
        output_name: str,
        *,
        timeout_s: float,
        breaker_failures: int,
        breaker_cooldown_s: float,
    ) -> None:
        self.url, self.output_name, self.timeout_s = url.rstrip("/"), output_name, timeout_s
        self.breaker_failures, self.breaker_cooldown_s = breaker_failures, breaker_cooldown_s
        self._client: Any = None
        self._failures_in_row = 0
        self._open_until = 0.0

    async def open(self) -> None:
        httpx = serve_module("httpx")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, limits=limits)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def run(self, feed: Feed) -> np.ndarray:
        """The large model's first output for ``feed``, or :class:`RemoteFailure`."""
        if time.monotonic() < self._open_until:
            raise RemoteFailure("circuit_open")
        try:
            output = await asyncio.wait_for(self._call(feed), self.timeout_s)
        except RemoteFailure:
            self._failed()
            raise
        except (TimeoutError, asyncio.TimeoutError):
            self._failed()
            raise RemoteFailure("timeout") from None
        self._failures_in_row = 0
        return output

    async def _call(self, feed: Feed) -> np.ndarray:
        httpx = serve_module("httpx")
        try:
            response = await self._client.post(
                "/predict", content=encode_npz(feed), headers={"content-type": NPZ, "accept": NPZ}
            )
        except httpx.TimeoutException:
            raise RemoteFailure("timeout") from None
        except httpx.HTTPError:
            raise RemoteFailure("unreachable") from None
        if response.status_code != 200:
            raise RemoteFailure(f"status_{response.status_code}")
        return self._decode(response.content, _batch(feed))

    def _decode(self, body: bytes, rows: int) -> np.ndarray:
        try:
            arrays = decode_npz(body)
        except RequestError:
            raise RemoteFailure("bad_response") from None
        output = arrays.get(self.output_name)
        if output is None or output.ndim == 0 or output.shape[0] != rows:
            raise RemoteFailure("bad_response")
        return output

    def _failed(self) -> None:
        self._failures_in_row += 1
        if self._failures_in_row >= self.breaker_failures:
            self._open_until = time.monotonic() + self.breaker_cooldown_s
            self._failures_in_row = 0
            log.warning(
                "remote %s failed %d times in a row; answering locally for %.1f s",
                self.url,
                self.breaker_failures,
                self.breaker_cooldown_s,
            )
