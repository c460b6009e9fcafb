"""A small HTTP client for devices and operators: standard library only, keep-alive, resumable
downloads. A device needs nothing beyond Python, numpy, onnxruntime and cryptography."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgetune.bundle.ota.errors import (
    Conflict,
    Forbidden,
    NotFound,
    OtaError,
    Unauthorized,
    Unavailable,
)
from edgetune.errors import ConfigError

__all__ = ["Http"]

_ERRORS: dict[int, type[OtaError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound,
                                       409: Conflict}
_NET_ERRORS = (OSError, http.client.HTTPException)
_STALE = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)
CHUNK = 64 << 10


class Http:
    """One keep-alive connection to the server; reconnects after any failure."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"server URL {base_url!r} must look like http://127.0.0.1:8765")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token, self.timeout = token, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (http.client.HTTPSConnection if self.scheme == "https"
                   else http.client.HTTPConnection)
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def open(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """Send a request; the caller reads (and so releases) the response. A kept-alive
        connection the server has meanwhile closed is reopened once, transparently."""
        reused = self._conn is not None
        try:
            return self._send(method, path, body, headers)
        except _STALE as exc:
            self.close()
            if not reused:
                raise Unavailable(f"cannot reach {self.host}:{self.port} ({exc}); is the "
                                  "server running?") from None
        except _NET_ERRORS as exc:
            self.close()
            raise Unavailable(f"cannot reach {self.host}:{self.port} ({exc}); is the server "
                              "running?") from None
        if hasattr(body, "seek"):
            body.seek(0)
        try:
            return self._send(method, path, body, headers)
        except _NET_ERRORS as exc:
            self.close()
            raise Unavailable(f"cannot reach {self.host}:{self.port} ({exc}); is the server "
                              "running?") from None

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str] | None
              ) -> http.client.HTTPResponse:
        conn = self._connection()
        conn.request(method, path, body=body, headers=self._headers(headers))
        return conn.getresponse()

    def json(self, method: str, path: str, payload: Any = None, *, body: Any = None,
             headers: dict[str, str] | None = None) -> Any:
        """A JSON request; an error status raises the matching OtaError with the server's text."""
        extra = dict(headers or {})
        if payload is not None:
            body = json.dumps(payload).encode()
            extra["Content-Type"] = "application/json"
        response = self.open(method, path, body, extra)
        try:
            data = response.read()
        except _NET_ERRORS as exc:
            self.close()
            raise Unavailable(f"connection broke while reading {path} ({exc})") from None
        return _decode(response.status, data, path)

    def download(self, path: str, dest: Path, size: int,
                 on_chunk: Callable[[int], None] | None = None) -> None:
        """Fetch into ``dest``, resuming from whatever part of it is already there."""
        have = dest.stat().st_size if dest.exists() else 0
        if have > size:
            dest.unlink()
            have = 0
        if have == size:
            return
        response = self.open("GET", path, headers={"Range": f"bytes={have}-"})
        if response.status not in (200, 206):
            _decode(response.status, response.read(), path)
        if response.status == 200:
            have = 0
        elif not response.getheader("Content-Range", "").startswith(f"bytes {have}-"):
            response.read()
            dest.unlink(missing_ok=True)
            raise Unavailable(f"server answered {path} with another range; restarting it")
        self._stream(response, dest, have, size, on_chunk)

    def _stream(self, response: http.client.HTTPResponse, dest: Path, have: int, size: int,
                on_chunk: Callable[[int], None] | None) -> None:
        with dest.open("r+b" if have and dest.exists() else "wb") as out:
            out.seek(have)
            out.truncate()
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    if on_chunk is not None:
                        on_chunk(have)
            except _NET_ERRORS as exc:
                self.close()
                raise Unavailable(f"download broke at {have} of {size} bytes ({exc}); it "
                                  "resumes on the next try") from None
            finally:
                out.flush()
                os.fsync(out.fileno())
        if have != size:
            self.close()
            raise Unavailable(f"download ended at {have} of {size} bytes; it resumes on the "
                              "next try")


def _decode(status: int, data: bytes, path: str) -> Any:
    try:
        body = json.loads(data) if data else None
    except ValueError:
        body = None
    if 200 <= status < 300 and status != 204 and body is None:
        raise Unavailable(f"the answer to {path} was cut short; retrying next time")
    if status < 300:
        return body
    message = body.get("error") or body.get("detail") if isinstance(body, dict) else None
    cls = _ERRORS.get(status, OtaError)
    raise cls(f"server refused {path} (HTTP {status}): {message or data[:200]!r}", status)
