"""The HTTP services: bad requests get a clear 4xx and the server keeps serving; escalation
goes to a real remote server over loopback and falls back, flagged, when it is gone or slow."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edgetune.cascade import (
    BackgroundServer,
    CascadeConfig,
    ServeConfig,
    Target,
    build_cascade,
    create_cascade_app,
    create_model_app,
)
from edgetune.cascade.testing import tiny_pair, tiny_pair_data
from edgetune.errors import ConfigError


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    small, large = tiny_pair(noise=0.05)
    config = CascadeConfig(target=Target(max_drop=0.03), cost_small_ms=1.0, cost_large_ms=10.0)
    result = build_cascade(small, large, config, data=tiny_pair_data(large, 1500))
    return result.save(tmp_path_factory.mktemp("serve") / "casc")


@pytest.fixture(scope="module")
def samples(cascade_dir: Path) -> np.ndarray:
    from edgetune.load import load

    return tiny_pair_data(load(cascade_dir / "large.onnx"), 400, seed=99)["x"]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


BAD_REQUESTS = [
    (
        {"json": {"inputs": {"x": [[0.0] * 5]}}},
        422,
        "has shape [1, 5]; the model takes x: float32[batch,16]",
    ),
    (
        {"json": {"inputs": {"x": {"data": [[1] * 16], "dtype": "int64"}}}},
        422,
        "has dtype int64; the model needs float32",
    ),
    (
        {"content": _npy(np.zeros((2, 16))), "headers": {"content-type": "application/x-npy"}},
        422,
        "dtype float64",
    ),
    ({"json": {"inputs": {"x": [[0.0] * 16, [0.0] * 3]}}}, 422, "ragged"),
    ({"json": {"inputs": {"x": [["a"] * 16]}}}, 422, "holds strings"),
    ({"json": {"inputs": {"y": [[0.0] * 16]}}}, 422, "missing ['x'], unexpected ['y']"),
    ({"json": {"x": [[0.0] * 16]}}, 422, 'must be {"inputs"'),
    (
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),
    (
        {"content": b"\x00" * 64, "headers": {"content-type": "application/x-npy"}},
        400,
        "not a valid .npy",
    ),
    ({"content": b"x", "headers": {"content-type": "text/csv"}}, 415, "unsupported Content-Type"),
    (
        {"content": b"[" * 5000, "headers": {"content-type": "application/json"}},
        413,
        "limit is 4096 bytes",
    ),
    ({"json": {"inputs": {"x": [[0.0] * 16] * 9}}}, 413, "limit is 8 per request"),
    (
        {
            "content": b'{"inputs": {"x": [[NaN' + b", 0.0" * 15 + b"]]}}",
            "headers": {"content-type": "application/json"},
        },
        422,
        "NaN or Inf",
    ),
]


@pytest.mark.parametrize(("kwargs", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(
    cascade_dir: Path, samples: np.ndarray, kwargs: dict[str, Any], status: int, message: str
) -> None:
    app = create_cascade_app(cascade_dir, ServeConfig(max_body_bytes=4096, max_batch=8))
    with TestClient(app) as client:
        bad = client.post("/predict", **kwargs)
        assert bad.status_code == status and message in bad.json()["error"], bad.json()
        good = client.post("/predict", json={"inputs": {"x": samples[:2].tolist()}})
        assert good.status_code == 200 and len(good.json()["prediction"]) == 2
        assert f'edgetune_requests_total{{code="{status}"}} 1' in client.get("/metrics").text


def test_streamed_body_over_the_cap_is_refused(cascade_dir: Path) -> None:
    app = create_cascade_app(cascade_dir, ServeConfig(max_body_bytes=4096))
    with TestClient(app) as client:
        chunks = iter([b"[" * 3000, b"[" * 3000])
        response = client.post(
            "/predict", content=chunks, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]


def test_in_process_cascade_answers_json_npy_and_npz(
    cascade_dir: Path, samples: np.ndarray
) -> None:
    with TestClient(create_cascade_app(cascade_dir)) as client:
        x = samples[:32]
        by_json = client.post("/predict", json={"inputs": {"x": x.tolist()}}).json()
        by_npy = client.post(
            "/predict", content=_npy(x), headers={"content-type": "application/x-npy"}
        ).json()
        buffer = io.BytesIO()
        np.savez(buffer, x=x)
        by_npz = client.post(
            "/predict", content=buffer.getvalue(), headers={"content-type": "application/x-npz"}
        ).json()
        assert by_json["prediction"] == by_npy["prediction"] == by_npz["prediction"]
        assert set(by_json["answered_by"]) <= {"small", "large"} and not by_json["fallback"]
        single = client.post("/predict", json={"inputs": {"x": x[0].tolist()}}).json()
        assert single["prediction"] == by_json["prediction"][:1]
        info = client.get("/info").json()
        assert info["large"] == "in process" and "confidence" in info["guarantee"]


def test_model_server_answers_json_and_npz(cascade_dir: Path, samples: np.ndarray) -> None:
    with TestClient(create_model_app(cascade_dir / "large.onnx")) as client:
        as_json = client.post("/predict", json={"inputs": {"x": samples[:3].tolist()}}).json()
        response = client.post(
            "/predict",
            content=_npy(samples[:3]),
            headers={"content-type": "application/x-npy", "accept": "application/x-npz"},
        )
        with np.load(io.BytesIO(response.content)) as npz:
            assert np.allclose(npz["y"], np.array(as_json["outputs"]["y"]))
        assert client.get("/healthz").json() == {"status": "ok"}


def _escalated_samples(client: TestClient, samples: np.ndarray) -> np.ndarray:
    answer = client.post("/predict", json={"inputs": {"x": samples[:64].tolist()}}).json()
    escalated = samples[:64][np.array(answer["escalated"])]
    assert len(escalated) > 0
    return escalated


def test_remote_escalation_over_loopback_then_flagged_fallback_when_it_stops(
    cascade_dir: Path, samples: np.ndarray
) -> None:
    remote = BackgroundServer(create_model_app(cascade_dir / "large.onnx")).start()
    config = ServeConfig(remote=remote.url, remote_timeout_s=2.0)
    try:
        with TestClient(create_cascade_app(cascade_dir, config)) as client:
            hard = _escalated_samples(client, samples)
            answer = client.post("/predict", json={"inputs": {"x": hard.tolist()}}).json()
            assert set(answer["answered_by"]) == {"large"} and not answer["fallback"]
            remote.stop()
            response = client.post("/predict", json={"inputs": {"x": hard.tolist()}})
            answer = response.json()
            assert response.status_code == 200 and answer["fallback"]
            assert set(answer["answered_by"]) == {"small_fallback"}
            assert answer["fallback_reason"] == "remote unreachable"
            metrics = client.get("/metrics").text
            assert 'edgetune_remote_failures_total{reason="unreachable"} 1' in metrics
            assert f"edgetune_fallbacks_total {len(hard)}" in metrics
    finally:
        remote.stop()


def _slow_app(delay_s: float) -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict() -> dict[str, Any]:
        await asyncio.sleep(delay_s)
        return {}

    return app


def test_slow_remote_times_out_then_the_breaker_opens(
    cascade_dir: Path, samples: np.ndarray
) -> None:
    with BackgroundServer(_slow_app(1.0)).running() as slow:
        config = ServeConfig(
            remote=slow.url, remote_timeout_s=0.2, breaker_failures=2, breaker_cooldown_s=60.0
        )
        with TestClient(create_cascade_app(cascade_dir, config)) as client:
            hard = _escalated_samples(client, samples).tolist()
            reasons = [
                client.post("/predict", json={"inputs": {"x": hard}}).json()["fallback_reason"]
                for _ in range(2)
            ]
            assert reasons[1:] == ["remote circuit_open"]
            assert reasons[0] == "remote timeout"
            metrics = client.get("/metrics").text
            assert 'reason="timeout"' in metrics and 'reason="circuit_open"' in metrics


def test_drift_is_reported_for_shifted_traffic_only(cascade_dir: Path, samples: np.ndarray) -> None:
    config = ServeConfig(drift_window=400, drift_min_samples=300)
    with TestClient(create_cascade_app(cascade_dir, config)) as client:
        assert not client.get("/drift").json()["ready"]
        for chunk in np.array_split(samples, 8):
            client.post("/predict", json={"inputs": {"x": chunk.tolist()}})
        calm = client.get("/drift").json()
        assert calm["ready"] and not calm["drift"], calm["reasons"]
        shifted = np.random.default_rng(3).normal(0.0, 0.25, (400, 16)).astype(np.float32)
        for chunk in np.array_split(shifted, 8):
            client.post("/predict", json={"inputs": {"x": chunk.tolist()}})
        drift = client.get("/drift").json()
        assert drift["drift"] and "recalibrate" in drift["advice"]
        assert "edgetune_drift_detected 1" in client.get("/metrics").text


def test_serve_config_refuses_a_bad_remote() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        ServeConfig(remote="ftp://example").validated()


@pytest.mark.e2e
def test_cli_servers_answer_over_loopback_and_stop_cleanly(
    cascade_dir: Path, samples: np.ndarray
) -> None:
    """`edgetune serve` and `edgetune cascade serve --remote` as real processes."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def start(*args: str) -> subprocess.Popen[bytes]:
        code = "from edgetune.cli import main; main()"
        return subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE)

    def wait(url: str, proc: subprocess.Popen[bytes]) -> None:
        for _ in range(300):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"{url} did not start")

    ports = free_port(), free_port()
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    remote = start("serve", str(cascade_dir / "large.onnx"), "--port", str(ports[0]))
    cascade = start("cascade", "serve", str(cascade_dir), "--port", str(ports[1]),
                    "--remote", urls[0])  # fmt: skip
    try:
        wait(urls[0], remote)
        wait(urls[1], cascade)
        answer = httpx.post(f"{urls[1]}/predict", json={"inputs": {"x": samples[:64].tolist()}})
        body = answer.json()
        assert answer.status_code == 200 and "large" in body["answered_by"]
        assert not body["fallback"]
    finally:
        for proc in (remote, cascade):
            proc.send_signal(signal.SIGTERM)
    for proc in (remote, cascade):
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
        assert b"Traceback" not in (proc.stderr.read() if proc.stderr else b"")
