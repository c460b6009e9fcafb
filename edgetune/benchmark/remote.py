"""The client side of the device agent: ship models (hash-verified), run the benchmark there.

Every model goes up with its sha256; the agent recomputes the digest of what it stored and of
what its benchmark read, and the client checks both against its own, so a corrupted transfer or
a stale file never produces numbers for the wrong model. Several devices are benchmarked one
after the other (on one host, parallel runs would disturb each other's timings).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.bench import BenchConfig
from edgetune.benchmark.device import tier_name
from edgetune.benchmark.inputs import DataSpec
from edgetune.core.model import Model
from edgetune.errors import ConfigError, MissingExtraError, RuntimeBackendError
from edgetune.load import load
from edgetune.report.schema import new_report

__all__ = ["AgentClient", "bench_devices"]

DEFAULT_TIMEOUT_S = 3600.0


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise MissingExtraError("httpx", "agent", "benchmarking on a device agent") from None
    return httpx


class AgentClient:
    """One agent at ``url``; ``transport`` lets tests substitute a fake (httpx.MockTransport)."""

    def __init__(
        self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, transport: Any = None
    ) -> None:
        httpx = _httpx()
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"device {url!r} must be an http(s) URL like http://127.0.0.1:8765")
        timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def info(self) -> dict[str, Any]:
        data = self._call("GET", "/v1/info")
        if data.get("agent") != "edgetune" or "device" not in data:
            raise RuntimeBackendError(
                f"{self.url} answered but is not an edgetune agent (got keys {sorted(data)[:6]}); "
                "check the address and port"
            )
        return data

    def upload_model(self, model: Model) -> str:
        payload = model.to_bytes()
        sha = hashlib.sha256(payload).hexdigest()
        answer = self._call(
            "PUT", f"/v1/models/{sha}", content=payload, params={"name": _safe(model.name)}
        )
        self._verify(answer.get("sha256"), sha, f"model {model.name!r}")
        return sha

    def upload_data(self, arrays: dict[str, np.ndarray]) -> str:
        buffer = io.BytesIO()
        named: dict[str, Any] = dict(arrays)
        np.savez(buffer, **named)
        payload = buffer.getvalue()
        sha = hashlib.sha256(payload).hexdigest()
        answer = self._call("PUT", f"/v1/data/{sha}", content=payload)
        self._verify(answer.get("sha256"), sha, "benchmark data")
        return sha

    def bench(
        self, models: list[Model], config: BenchConfig, data: dict[str, np.ndarray] | None
    ) -> dict[str, Any]:
        """Upload, run, verify: the agent's bench section, tagged with its device facts."""
        shas = [self.upload_model(m) for m in models]
        data_sha = self.upload_data(data) if data is not None else None
        body = {"models": shas, "data": data_sha, "config": config.to_dict()}
        answer = self._call("POST", "/v1/bench", json=body)
        for model, sha, ran in zip(models, shas, answer.get("models") or [], strict=False):
            self._verify(ran.get("sha256"), sha, f"model {model.name!r} as benchmarked")
        if len(answer.get("models") or []) != len(shas) or "bench" not in answer:
            raise RuntimeBackendError(
                f"agent at {self.url} answered an incomplete benchmark; retry"
            )
        section: dict[str, Any] = answer["bench"]
        return section

    def _verify(self, got: Any, want: str, what: str) -> None:
        if got != want:
            raise RuntimeBackendError(
                f"agent at {self.url} reports sha256 {str(got)[:16]}... for {what}, expected "
                f"{want[:16]}...; the transfer was corrupted or the agent holds another file; retry"
            )

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        httpx = _httpx()
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise RuntimeBackendError(
                f"cannot reach the edgetune agent at {self.url} ({type(exc).__name__}: {exc}); "
                "start it on the device with 'edgetune agent --host 127.0.0.1 --port PORT' and "
                "check the address"
            ) from None
        return _json(response, self.url)


def _json(response: Any, url: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code >= 400:
        message = data.get("error") or data.get("detail") if isinstance(data, dict) else None
        message = message or response.text[:200]
        raise RuntimeBackendError(
            f"agent at {url} refused the request (HTTP {response.status_code}): {message}"
        )
    if not isinstance(data, dict):
        raise RuntimeBackendError(
            f"agent at {url} answered something that is not a JSON object; "
            "check it is an edgetune agent"
        )
    return data


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name).lstrip(".")
    return cleaned[:100] or "model"


def bench_devices(
    urls: Sequence[str],
    models: Sequence[Model | str | Path],
    config: BenchConfig,
    *,
    data: DataSpec | None = None,
    transport: Any = None,
) -> dict[str, Any]:
    """Benchmark on every agent; a report whose ``devices`` list holds one bench per device."""
    loaded = [load(m) for m in models]
    arrays = _arrays(data, loaded[0], config.samples * config.batch) if data is not None else None
    devices = []
    for url in urls:
        client = AgentClient(url, transport=transport)
        try:
            info = client.info()
            section = client.bench(loaded, config, arrays)
        finally:
            client.close()
        section["device"] = {**info["device"], **section.get("device", {})}
        devices.append({"url": url, "tier": tier_name(section["device"]), "bench": section})
    report = new_report("bench")
    report["devices"] = devices
    return report


def _arrays(data: DataSpec, model: Model, limit: int) -> dict[str, np.ndarray]:
    """The samples the benchmark uses, as plain arrays: an .npz goes to the agent, a
    ``package.module:function`` dataset is run here and never executed on the device."""
    from edgetune.core.data import BoundData, bind

    bound = data if isinstance(data, BoundData) else bind(data, model)
    return bound.materialize(limit=limit)
