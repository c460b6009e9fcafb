"""The rollout server: a FastAPI app over :class:`~edgetune.bundle.ota.fleet.Fleet`.

Two kinds of caller, told apart by their bearer token alone:

* the **operator** (one token, kept in a file): registers devices, uploads releases, starts,
  watches and halts rollouts, reads any device's reports;
* a **device** (its own token from enrollment): asks what to do, downloads bundles and deltas
  (with HTTP ranges, so an interrupted download resumes), and reports on itself.

A missing or unknown token gets 401; a known token asking for the other kind's routes gets 403.
Files are served only by release id, from the store, by digest. A background thread evaluates
the running rollout every ``tick_s`` seconds; all its state is in the database, so a server
killed at any moment resumes the rollout where it stood when it is started again.
"""

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgetune.bundle.ota import auth
from edgetune.bundle.ota.errors import Forbidden, OtaError, Unauthorized
from edgetune.bundle.ota.fleet import Fleet
from edgetune.bundle.ota.rollout import RolloutPolicy
from edgetune.errors import ConfigError, EdgetuneError, MissingExtraError

__all__ = ["ServerConfig", "create_app", "open_fleet", "running_server", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    db_url: str = "sqlite:///ota.db"
    store: Path = Path("ota-store")
    token_file: Path = Path("ota-operator.token")
    keys: tuple[Path, ...] = ()
    """Public keys uploads must be signed with (none: uploads are checked for structure only;
    devices always check signatures themselves)."""
    host: str = "127.0.0.1"
    port: int = 8765
    tick_s: float = 1.0
    max_upload_mb: int = 2048

    def validate(self) -> "ServerConfig":
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535; got {self.port}")
        if self.tick_s <= 0 or self.max_upload_mb <= 0:
            raise ConfigError("tick_s and max_upload_mb must be > 0")
        return self


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError:
        raise MissingExtraError("fastapi", "ota", "the rollout server") from None
    return fastapi


def open_fleet(config: ServerConfig) -> Fleet:
    from edgetune.bundle.ota.db import Database
    from edgetune.bundle.ota.store import BlobStore
    from edgetune.bundle.sign import load_public_key

    keys = [load_public_key(k) for k in config.keys]
    return Fleet(Database(config.db_url), BlobStore(config.store), keys)


class _Evaluator(threading.Thread):
    """Evaluates the running rollout every ``tick_s`` seconds until stopped."""

    def __init__(self, fleet: Fleet, tick_s: float) -> None:
        super().__init__(name="rollout-evaluator", daemon=True)
        self.fleet, self.tick_s = fleet, tick_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.tick_s):
            try:
                self.fleet.evaluate()
            except Exception:  # a failed tick is logged and retried on the next one
                log.exception("rollout evaluation failed")


def create_app(fleet: Fleet, operator_token: str, *, tick_s: float = 1.0,
               max_upload_bytes: int = 2 << 30) -> Any:
    fastapi = _fastapi()
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse

    from edgetune.bundle.ota.schemas import Enroll, Halt, Register, Report, StartRollout
    operator_digest = auth.digest(operator_token)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        evaluator = _Evaluator(fleet, tick_s)
        evaluator.start()
        yield
        evaluator.stop.set()
        evaluator.join(timeout=5)

    app = fastapi.FastAPI(title="edgetune ota", lifespan=lifespan, docs_url=None,
                          redoc_url=None, openapi_url=None)

    @app.exception_handler(EdgetuneError)
    async def _refused(_: Request, exc: EdgetuneError) -> Any:
        status = exc.status if isinstance(exc, OtaError) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    def operator(request: Request) -> None:
        token = auth.bearer(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("operator credential required: send 'Authorization: Bearer TOKEN'")
        if not auth.matches(token, operator_digest):
            if fleet.device_by_token(token) is not None:
                raise Forbidden("a device credential cannot do this; it needs the operator's")
            raise Unauthorized("unknown credential; use the operator token file")

    def device(request: Request) -> Any:
        token = auth.bearer(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("device credential required: enroll first, then send "
                               "'Authorization: Bearer TOKEN'")
        row = fleet.device_by_token(token)
        if row is None:
            if auth.matches(token, operator_digest):
                raise Forbidden("the operator credential is not a device's; use a device token")
            raise Unauthorized("unknown device credential; enroll the device first")
        return row

    def anyone(request: Request) -> Any:
        """A device row, or None for the operator; 401 for anyone else."""
        token = auth.bearer(request.headers.get("authorization"))
        if token is not None and auth.matches(token, operator_digest):
            return None
        return device(request)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/v1/devices")
    def register(body: Register, request: Request) -> dict[str, Any]:
        operator(request)
        return {"codes": fleet.register(body.devices, body.tier)}

    @app.post("/v1/enroll")
    def enroll(body: Enroll) -> dict[str, Any]:
        return {"token": fleet.enroll(body.device_id, body.code)}

    @app.post("/v1/releases")
    async def upload(request: Request) -> Any:
        operator(request)
        tmp = await fleet.store.receive(request.stream(), max_upload_bytes)
        release = await run_in_threadpool(fleet.add_release, tmp)
        return JSONResponse(release, status_code=201)

    @app.get("/v1/releases")
    def releases(request: Request) -> list[dict[str, Any]]:
        operator(request)
        return fleet.releases()

    @app.get("/v1/releases/{release_id}/{kind}")
    def download(release_id: int, kind: Literal["bundle", "delta"], request: Request) -> Any:
        anyone(request)
        path = fleet.blob_path(release_id, "etb" if kind == "bundle" else "etd")
        return FileResponse(path, media_type="application/octet-stream")

    @app.post("/v1/rollouts")
    def start(body: StartRollout, request: Request) -> Any:
        operator(request)
        policy = RolloutPolicy.from_dict(body.policy)
        status = fleet.start_rollout(body.release_id, body.stages, policy)
        return JSONResponse(status, status_code=201)

    @app.get("/v1/rollouts/{rollout_id}")
    def rollout(rollout_id: int, request: Request) -> dict[str, Any]:
        operator(request)
        return fleet.rollout_status(rollout_id)

    @app.post("/v1/rollouts/{rollout_id}/halt")
    def halt(rollout_id: int, body: Halt, request: Request) -> dict[str, Any]:
        operator(request)
        return fleet.halt(rollout_id, body.reason)

    @app.get("/v1/fleet")
    def summary(request: Request) -> dict[str, Any]:
        operator(request)
        return fleet.summary()

    @app.get("/v1/device/desired")
    def desired(request: Request, version: str | None = None,
                sha256: str | None = None) -> dict[str, Any]:
        return fleet.desired(device(request), version, sha256)

    @app.post("/v1/device/reports", status_code=204)
    def report(body: Report, request: Request) -> None:
        fleet.report(device(request), body.model_dump())

    @app.get("/v1/device/reports")
    def my_reports(request: Request) -> list[dict[str, Any]]:
        return fleet.reports_of(device(request).id)

    @app.get("/v1/devices/{device_id}/reports")
    def reports(device_id: str, request: Request) -> list[dict[str, Any]]:
        caller = anyone(request)
        if caller is not None and caller.id != device_id:
            raise Forbidden(f"device {caller.id!r} cannot read the reports of {device_id!r}")
        return fleet.reports_of(device_id)

    return app


def serve(config: ServerConfig) -> None:
    """Run the server until interrupted (blocking)."""
    config = config.validate()
    try:
        import uvicorn
    except ImportError:
        raise MissingExtraError("uvicorn", "ota", "the rollout server") from None
    fleet = open_fleet(config)
    token = auth.load_or_create_token(config.token_file)
    app = create_app(fleet, token, tick_s=config.tick_s,
                     max_upload_bytes=config.max_upload_mb << 20)
    log.info("rollout server on http://%s:%d, database %s", config.host, config.port,
             config.db_url)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)


@contextmanager
def running_server(fleet: Fleet, operator_token: str, *, tick_s: float = 1.0) -> Iterator[str]:
    """Serve in a background thread on a free loopback port; yields the base URL.
    For embedding and tests; ``serve`` is the production entry point."""
    import socket

    import uvicorn

    app = create_app(fleet, operator_token, tick_s=tick_s)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise OtaError("the rollout server thread stopped while starting")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
