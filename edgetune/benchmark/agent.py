"""The device agent: an HTTP server on the device that runs the same benchmark there.

Protocol (JSON over HTTP, version 1):

* ``GET /v1/info``: ``{"agent": "edgetune", "protocol": 1, "version", "device": {...facts}}``.
* ``PUT /v1/models/{sha256}?name=NAME``: the model's bytes; the agent hashes what it received
  and refuses it (HTTP 400) when the digest is not ``sha256``; answers ``{"sha256", "size"}``.
* ``PUT /v1/data/{sha256}``: an .npz of benchmark inputs, the same way.
* ``POST /v1/bench``: ``{"models": [sha256...], "data": sha256|null, "config": {...}}`` runs
  :func:`edgetune.benchmark.bench.bench` on the stored files and answers ``{"bench": {...},
  "models": [{"name", "sha256"}]}``, hashes recomputed from the files the benchmark read.
  One benchmark at a time (HTTP 409 while busy): two would disturb each other's timings.

What the agent refuses, because a benchmark request must not run code on the device: runtime
settings (a torch module factory is an import), data given as ``package.module:function``
(only uploaded .npz, read with ``allow_pickle=False``), and unknown config keys. It binds to
127.0.0.1 unless told otherwise, and ``--cores N`` pins it, and every process it starts, to N
cores, so one machine can stand in for a smaller device.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at
# runtime, and ``fastapi.Request`` is only in scope inside ``_routes`` (fastapi is optional).
import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from edgetune._version import __version__
from edgetune.errors import ConfigError, EdgetuneError, MissingExtraError

__all__ = ["PROTOCOL", "create_app", "pin_cores", "serve"]

log = logging.getLogger(__name__)

PROTOCOL = 1
MAX_UPLOAD_BYTES = 4 * 1024**3
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError:
        raise MissingExtraError("fastapi", "agent", "the device agent") from None
    return fastapi


def pin_cores(cores: int) -> list[int]:
    """Restrict this process (and its future children) to its first ``cores`` allowed CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= cores <= len(allowed):
        raise ConfigError(f"--cores must be between 1 and {len(allowed)} here; got {cores}")
    os.sched_setaffinity(0, allowed[:cores])
    return allowed[:cores]


class _Agent:
    """State shared by the request handlers: where files live, the device facts, the lock."""

    def __init__(self, workdir: Path, tier: str | None) -> None:
        self.workdir = workdir
        self.tier = tier
        self.lock = threading.Lock()

    def facts(self) -> dict[str, Any]:
        from edgetune.benchmark.device import device_facts

        facts = device_facts()
        facts["tier"] = self.tier
        return facts

    def model_path(self, sha: str) -> Path | None:
        folder = self.workdir / "models" / sha
        found = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
        return found[0] if found else None

    def data_path(self, sha: str) -> Path:
        return self.workdir / "data" / f"{sha}.npz"


def create_app(workdir: Path, *, tier: str | None = None) -> Any:
    """The FastAPI application of an agent storing its files under ``workdir``."""
    fastapi = _fastapi()
    app = fastapi.FastAPI(title="edgetune agent", version=__version__)
    agent = _Agent(Path(workdir), tier)
    _routes(app, agent, fastapi)
    return app


def _routes(app: Any, agent: _Agent, fastapi: Any) -> None:
    from fastapi.responses import JSONResponse

    @app.exception_handler(EdgetuneError)
    async def _error(request: Any, exc: EdgetuneError) -> Any:
        return JSONResponse(status_code=400, content={"error": str(exc)})

    @app.get("/v1/info")
    def info() -> dict[str, Any]:
        return {
            "agent": "edgetune",
            "protocol": PROTOCOL,
            "version": __version__,
            "device": agent.facts(),
        }

    @app.put("/v1/models/{sha}")
    async def put_model(sha: str, request: fastapi.Request, name: str = "model") -> Any:
        if not _NAME.match(name) or name.startswith("."):
            return _bad(f"model name {name!r} may use only letters, digits, '_', '.', '-'")
        target = agent.workdir / "models" / sha / f"{name}.onnx"
        return await _receive(request, sha, target)

    @app.put("/v1/data/{sha}")
    async def put_data(sha: str, request: fastapi.Request) -> Any:
        return await _receive(request, sha, agent.data_path(sha))

    @app.post("/v1/bench")
    def run_bench(body: dict[str, Any]) -> Any:
        if not agent.lock.acquire(blocking=False):
            return JSONResponse(
                status_code=409,
                content={"error": "the agent is running another benchmark; retry later"},
            )
        try:
            return _bench(agent, body)
        finally:
            agent.lock.release()


def _bad(message: str, status: int = 400) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": message})


async def _receive(request: Any, sha: str, target: Path) -> Any:
    """Stream the body to disk while hashing it; keep it only if the digest matches."""
    if not _SHA.match(sha):
        return _bad(f"{sha!r} is not a lowercase hex sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    digest, size = hashlib.sha256(), 0
    with tmp.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                tmp.unlink(missing_ok=True)
                return _bad(f"upload larger than {MAX_UPLOAD_BYTES} bytes", 413)
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != sha:
        tmp.unlink(missing_ok=True)
        return _bad(
            f"hash mismatch: received {size} bytes with sha256 {digest.hexdigest()}, "
            f"expected {sha}; the upload was corrupted, send it again"
        )
    os.replace(tmp, target)
    return {"sha256": sha, "size": size}


def _bench(agent: _Agent, body: dict[str, Any]) -> Any:
    from edgetune.benchmark.bench import BenchConfig, bench

    config = BenchConfig.from_dict(body.get("config") or {})
    if config.threads is None:
        config = BenchConfig.from_dict(
            {**config.to_dict(), "threads": len(os.sched_getaffinity(0))}
        )
    paths = []
    for sha in body.get("models") or []:
        path = agent.model_path(str(sha)) if _SHA.match(str(sha)) else None
        if path is None:
            return _bad(f"model {sha!r} was not uploaded; PUT /v1/models/{{sha256}} first", 404)
        paths.append(path)
    if not paths:
        return _bad("no models given; send {'models': [sha256, ...]}")
    data = _data(agent, body.get("data"))
    result = bench(paths, config, data=data)
    section = result.to_dict()
    section["device"]["tier"] = agent.tier
    files = [{"name": p.stem, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in paths]
    return {"bench": section, "models": files}


def _data(agent: _Agent, sha: Any) -> Path | None:
    if sha is None:
        return None
    path = agent.data_path(str(sha)) if _SHA.match(str(sha)) else None
    if path is None or not path.is_file():
        raise ConfigError(f"data {sha!r} was not uploaded; PUT /v1/data/{{sha256}} first")
    return path


def serve(
    host: str, port: int, *, workdir: Path, tier: str | None = None, allow_remote: bool = False
) -> None:
    """Run the agent until interrupted (blocking)."""
    if host not in _LOOPBACK and not allow_remote:
        raise ConfigError(
            f"the agent binds to {host!r}, which is not loopback; it runs benchmarks for whoever "
            "reaches it, so pass --allow-remote only on a trusted network"
        )
    try:
        import uvicorn
    except ImportError:
        raise MissingExtraError("uvicorn", "agent", "the device agent") from None
    app = create_app(workdir, tier=tier)
    log.info(
        "edgetune agent on http://%s:%d (cores %s)", host, port, sorted(os.sched_getaffinity(0))
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
