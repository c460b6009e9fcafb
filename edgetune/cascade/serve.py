"""HTTP services: one model (``edgetune serve``) and a cascade (``edgetune cascade serve``).

The cascade's small model answers every request in process; the gate escalates the samples it
is not confident about to the large model, either in process or on a remote ``edgetune serve``
over HTTP with a deadline. When the remote is slow, failing or unreachable, the escalated
samples get the small model's answer, flagged ``small_fallback``: a request never fails
because the remote did. After several failures in a row a circuit breaker stops calling the
remote for a short cool-down, so a dead remote does not add its timeout to every request.

Endpoints: ``POST /predict``, ``GET /metrics`` (Prometheus text), ``GET /healthz``,
``GET /info``, and for a cascade ``GET /drift``. Bodies are capped (413), checked against the
model's inputs (4xx with a one-line message) and never reach the model unchecked.

Routes are plain Starlette routes (``add_route``): each handler takes the request and returns
a response, so nothing depends on FastAPI reading annotations of lazily imported types.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from edgetune.cascade._deps import serve_module
from edgetune.cascade.artifact import LoadedCascade
from edgetune.cascade.drift import DriftMonitor
from edgetune.cascade.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, MetricSet
from edgetune.cascade.remote import RemoteFailure, RemoteLarge
from edgetune.cascade.runner import CascadeAnswer, CascadeRunner, LocalAnswer, take_rows
from edgetune.cascade.wire import NPZ, RequestError, encode_npz, parse_feed, read_capped
from edgetune.core.model import Model, TensorSpec
from edgetune.errors import ConfigError, RuntimeBackendError
from edgetune.load import load
from edgetune.runtimes import Runtime, SessionOptions, get_runtime

__all__ = [
    "BackgroundServer",
    "RemoteFailure",
    "RemoteLarge",
    "ServeConfig",
    "create_cascade_app",
    "create_model_app",
    "run_server",
]

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How to serve. The remote fields only matter for a cascade."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 256
    threads: int | None = 1
    """ONNX Runtime intra-op threads per session; requests run concurrently in a thread pool."""
    remote: str | None = None
    """Base URL of an ``edgetune serve`` running the large model; None runs it in process."""
    remote_timeout_s: float = 0.5
    breaker_failures: int = 5
    breaker_cooldown_s: float = 2.0
    drift_window: int = 1000
    drift_min_samples: int = 200

    def validated(self) -> ServeConfig:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"the 'port' parameter must be in [0, 65535]; got {self.port}")
        for name in (
            "max_body_bytes",
            "max_batch",
            "breaker_failures",
            "drift_window",
            "drift_min_samples",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"the {name!r} parameter of ServeConfig must be >= 1; got {getattr(self, name)}"
                )
        if self.remote_timeout_s <= 0:
            raise ConfigError(f"the remote timeout must be > 0 s; got {self.remote_timeout_s}")
        if self.remote is not None and (
            urlparse(self.remote).scheme not in ("http", "https")
            or not urlparse(self.remote).netloc
        ):
            raise ConfigError(
                f"--remote {self.remote!r} is not an http(s) URL; give e.g. http://127.0.0.1:8001"
            )
        return self


def _error(status: int, message: str) -> Response:
    return _json({"error": message, "status": status}, status)


def _spec_json(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "dtype": str(s.dtype), "shape": None if s.shape is None else list(s.shape)}
        for s in specs
    ]


class _Endpoint:
    """What both services share: read and check the body, time and count, map errors."""

    def __init__(self, specs: list[TensorSpec], config: ServeConfig, metrics: MetricSet) -> None:
        self.specs, self.config, self.metrics = specs, config, metrics

    async def feed(self, request: Request) -> Feed:
        body = await read_capped(request.headers, request.stream(), self.config.max_body_bytes)
        return parse_feed(
            body,
            request.headers.get("content-type", ""),
            self.specs,
            max_batch=self.config.max_batch,
            input_name=request.headers.get("x-input-name"),
        )

    async def handle(
        self, request: Request, answer: Callable[[Feed], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        try:
            response = await answer(await self.feed(request))
        except RequestError as exc:
            response = _error(exc.status, str(exc))
        except RuntimeBackendError as exc:
            response = _error(422, str(exc))
        except Exception:  # the service must keep serving whatever one request does
            log.exception("unexpected error while answering a request")
            response = _error(500, "internal error while running the model; see the server log")
        with self.metrics.lock:
            self.metrics.counter("edgetune_requests_total").inc(code=str(response.status_code))
            self.metrics.histogram("edgetune_request_latency_seconds").observe(
                time.perf_counter() - start
            )
        return response


def _base_metrics() -> list[Counter | Gauge | Histogram]:
    return [
        Counter("edgetune_requests_total", "Requests answered, by HTTP status code."),
        Counter("edgetune_samples_total", "Samples answered (a request may hold a batch)."),
        Histogram("edgetune_request_latency_seconds", "Time to answer a request, in seconds."),
    ]


def _cascade_metrics() -> MetricSet:
    return MetricSet(
        [
            *_base_metrics(),
            Counter("edgetune_escalations_total", "Samples the gate escalated to the large model."),
            Counter(
                "edgetune_fallbacks_total",
                "Escalated samples answered by the small model because the large model failed.",
            ),
            Counter("edgetune_remote_failures_total", "Failed escalation calls, by reason."),
            Histogram(
                "edgetune_escalation_latency_seconds",
                "Time spent on the large model per escalating request, in seconds.",
            ),
            Gauge("edgetune_escalation_rate", "Escalated share of all samples since start."),
            Gauge("edgetune_window_escalation_rate", "Escalated share in the drift window."),
            Gauge(
                "edgetune_drift_psi", "Population stability index of gate scores vs calibration."
            ),
            Gauge("edgetune_drift_ks_pvalue", "KS test p-value of gate scores vs calibration."),
            Gauge("edgetune_drift_detected", "1 when the gate should be re-checked (see /drift)."),
        ]
    )


def _app(title: str, lifespan: Any = None) -> Any:
    fastapi = serve_module("fastapi")
    return fastapi.FastAPI(
        title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )


def _model_response(
    request: Request, names: list[str], outputs: list[np.ndarray], model: str
) -> Response:
    if NPZ in request.headers.get("accept", ""):
        responses = serve_module("starlette.responses")
        body: Response = responses.Response(
            encode_npz(dict(zip(names, outputs, strict=True))), media_type=NPZ
        )
        return body
    arrays = {n: o.tolist() for n, o in zip(names, outputs, strict=True)}
    return _json({"model": model, "output_names": names, "outputs": arrays})


def create_model_app(
    model: Model | str | Path,
    config: ServeConfig | None = None,
    *,
    runtime: Runtime | str | None = None,
) -> Any:
    """A FastAPI app serving one model: ``POST /predict`` (JSON, .npy or .npz in; JSON or
    .npz out with ``Accept: application/x-npz``)."""
    concurrency = serve_module("starlette.concurrency")
    config = (config or ServeConfig()).validated()
    handle = load(model)
    session = get_runtime(runtime).session(handle, SessionOptions(threads=config.threads))
    metrics = MetricSet(_base_metrics())
    endpoint = _Endpoint(handle.inputs, config, metrics)
    app = _app(f"edgetune serve {handle.name}")

    async def predict(request: Request) -> Response:
        async def answer(feed: Feed) -> Response:
            outputs = await concurrency.run_in_threadpool(session.run, feed)
            with metrics.lock:
                metrics.counter("edgetune_samples_total").inc(_batch(feed))
            return _model_response(request, list(session.output_names), outputs, handle.name)

        return await endpoint.handle(request, answer)

    app.add_route("/predict", predict, methods=["POST"])

    _common_routes(
        app,
        metrics,
        lambda: {
            "model": handle.name,
            "inputs": _spec_json(handle.inputs),
            "outputs": _spec_json(handle.outputs),
        },
    )
    return app


def _batch(feed: Feed) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def _json(data: Any, status: int = 200) -> Response:
    responses = serve_module("starlette.responses")
    response: Response = responses.JSONResponse(data, status_code=status)
    return response


def _common_routes(
    app: Any,
    metrics: MetricSet,
    info: Callable[[], dict[str, Any]],
    before_scrape: Callable[[], None] | None = None,
) -> None:
    responses = serve_module("starlette.responses")

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def get_info(request: Request) -> Response:
        return _json(info())

    async def get_metrics(request: Request) -> Response:
        if before_scrape is not None:
            before_scrape()
        text: Response = responses.Response(metrics.render(), media_type=CONTENT_TYPE)
        return text

    app.add_route("/healthz", healthz, methods=["GET"])
    app.add_route("/info", get_info, methods=["GET"])
    app.add_route("/metrics", get_metrics, methods=["GET"])


class _CascadeService:
    """The cascade's request path: small model, gate, escalation, drift, metrics."""

    def __init__(self, runner: CascadeRunner, config: ServeConfig) -> None:
        self.runner, self.config = runner, config
        self.metrics = _cascade_metrics()
        ref = runner.cascade.reference
        self.drift = DriftMonitor(
            ref, window=config.drift_window, min_samples=config.drift_min_samples
        )
        self.remote = (
            None
            if config.remote is None
            else RemoteLarge(
                config.remote,
                runner.cascade.large.outputs[0].name,
                timeout_s=config.remote_timeout_s,
                breaker_failures=config.breaker_failures,
                breaker_cooldown_s=config.breaker_cooldown_s,
            )
        )

    async def answer(self, feed: Feed) -> Response:
        concurrency = serve_module("starlette.concurrency")
        local: LocalAnswer = await concurrency.run_in_threadpool(self.runner.local, feed)
        large, reason = (None, None)
        if local.needs_large:
            large, reason = await self._escalate(take_rows(feed, local.escalate))
        answer = CascadeAnswer.resolve(local, large, reason)
        self.drift.update(local.scores, local.escalate)
        self._count(answer)
        return _json(answer.to_json())

    async def _escalate(self, rows: Feed) -> tuple[np.ndarray | None, str | None]:
        concurrency = serve_module("starlette.concurrency")
        start = time.perf_counter()
        try:
            if self.remote is None:
                return await concurrency.run_in_threadpool(self.runner.large, rows), None
            return await self.remote.run(rows), None
        except RemoteFailure as exc:
            with self.metrics.lock:
                self.metrics.counter("edgetune_remote_failures_total").inc(reason=exc.reason)
            return None, f"remote {exc.reason}"
        finally:
            with self.metrics.lock:
                self.metrics.histogram("edgetune_escalation_latency_seconds").observe(
                    time.perf_counter() - start
                )

    def _count(self, answer: CascadeAnswer) -> None:
        m = self.metrics
        with m.lock:
            m.counter("edgetune_samples_total").inc(len(answer.escalated))
            m.counter("edgetune_escalations_total").inc(int(answer.escalated.sum()))
            m.counter("edgetune_fallbacks_total").inc(answer.sources.count("small_fallback"))

    def refresh_gauges(self) -> None:
        status = self.drift.status()
        m = self.metrics
        with m.lock:
            samples = m.counter("edgetune_samples_total").value()
            escalated = m.counter("edgetune_escalations_total").value()
            m.gauge("edgetune_escalation_rate").set(escalated / samples if samples else None)
            m.gauge("edgetune_window_escalation_rate").set(status.escalation_rate)
            m.gauge("edgetune_drift_psi").set(status.psi)
            m.gauge("edgetune_drift_ks_pvalue").set(status.ks_pvalue)
            m.gauge("edgetune_drift_detected").set(float(status.drift) if status.ready else None)

    def info(self) -> dict[str, Any]:
        spec = self.runner.cascade.spec
        return {
            "cascade": str(self.runner.cascade.path),
            "models": spec.models,
            "inputs": _spec_json(self.runner.inputs),
            "gate": spec.gate.to_dict(),
            "guarantee": spec.guarantee.get("statement"),
            "expected": spec.expected,
            "large": self.config.remote or "in process",
        }

    def drift_report(self) -> dict[str, Any]:
        status = self.drift.status().to_dict()
        advice = (
            "re-check the gate: edgetune cascade recalibrate CASCADE_DIR --eval NEW_VAL"
            if status["drift"]
            else "no drift detected"
        )
        return {**status, "advice": advice, "window": self.config.drift_window}


def create_cascade_app(
    cascade: LoadedCascade | str | Path,
    config: ServeConfig | None = None,
    *,
    runtime: Runtime | str | None = None,
) -> Any:
    """A FastAPI app serving a cascade directory (see the module docstring)."""
    config = (config or ServeConfig()).validated()
    runner = CascadeRunner(
        cascade,
        runtime=runtime,
        options=SessionOptions(threads=config.threads),
        load_large=config.remote is None,
    )
    service = _CascadeService(runner, config)
    endpoint = _Endpoint(runner.inputs, config, service.metrics)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if service.remote is not None:
            await service.remote.open()
        yield
        if service.remote is not None:
            await service.remote.close()

    app = _app("edgetune cascade", lifespan)
    app.state.service = service

    async def predict(request: Request) -> Response:
        return await endpoint.handle(request, service.answer)

    async def drift(request: Request) -> Response:
        return _json(service.drift_report())

    app.add_route("/predict", predict, methods=["POST"])
    app.add_route("/drift", drift, methods=["GET"])

    _common_routes(app, service.metrics, service.info, service.refresh_gauges)
    return app


def run_server(app: Any, config: ServeConfig) -> None:
    """Serve ``app`` until interrupted (blocking)."""
    uvicorn = serve_module("uvicorn")
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)


class BackgroundServer:
    """An app served by uvicorn in a thread on a free port: for tests, notebooks and benches."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        uvicorn = serve_module("uvicorn")
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start within {timeout_s} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    @contextmanager
    def running(self) -> Iterator[BackgroundServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
