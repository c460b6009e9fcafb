"""The device agent: a real HTTP round trip on loopback, and every way it can go wrong."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from edgetune.benchmark.agent import create_app, serve  # noqa: E402
from edgetune.benchmark.bench import BenchConfig  # noqa: E402
from edgetune.benchmark.latency import LatencyConfig  # noqa: E402
from edgetune.benchmark.remote import AgentClient, bench_devices  # noqa: E402
from edgetune.errors import ConfigError, RuntimeBackendError  # noqa: E402
from edgetune.testing.tiny import tiny_cnn, tiny_cnn_data  # noqa: E402

FAST = BenchConfig(
    runtimes=("onnxruntime",),
    cold_repeats=0,
    placement=False,
    latency=LatencyConfig(warmup=2, min_iters=20, max_iters=500, min_seconds=0.0, max_seconds=0.3),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agent_url(tmp_path: Path) -> Iterator[str]:
    """A real agent (uvicorn) on a loopback port, in a thread of this process."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(
        create_app(tmp_path / "agent", tier="test-tier"),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the agent did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_round_trip_on_loopback(agent_url: str, tmp_path: Path) -> None:
    model_path = tiny_cnn().save(tmp_path / "cnn.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, **tiny_cnn_data(32))
    report = bench_devices([agent_url], [model_path], FAST, data=str(data))
    (device,) = report["devices"]
    assert device["url"] == agent_url and device["tier"] == "test-tier"
    facts = device["bench"]["device"]
    assert (
        facts["cores_available"] >= 1 and facts["cpu_model"] and "onnxruntime" in facts["runtimes"]
    )
    (model,) = device["bench"]["models"]
    assert model["model"] == "cnn"
    entry = model["runtimes"][0]
    assert entry["runtime"] == "onnxruntime" and entry["status"] == "ok"
    assert entry["latency_ms"]["n"] >= 20
    assert device["bench"]["config"]["threads"] == facts["cores_available"]  # agent's cores
    import edgetune.report.bench  # noqa: F401  (registers the sections)
    from edgetune.report import render_html

    html = render_html(report)
    assert "Tier test-tier" in html and agent_url in html


def test_agent_refuses_a_corrupted_upload(agent_url: str) -> None:
    payload = b"not the bytes the hash is for"
    wrong = "0" * 64
    response = httpx.put(f"{agent_url}/v1/models/{wrong}", content=payload, params={"name": "m"})
    assert response.status_code == 400
    assert "hash mismatch" in response.json()["error"]


def test_agent_refuses_code_and_unknown_settings(agent_url: str, tmp_path: Path) -> None:
    client = AgentClient(agent_url)
    sha = client.upload_model(tiny_cnn())
    response = httpx.post(
        f"{agent_url}/v1/bench", json={"models": [sha], "config": {"runtimes": ["torch"]}}
    )
    assert response.status_code == 400 and "--torch-module" in response.json()["error"]
    response = httpx.post(
        f"{agent_url}/v1/bench", json={"models": [sha], "config": {"shell": "rm"}}
    )
    assert response.status_code == 400 and "unknown bench settings" in response.json()["error"]
    response = httpx.post(f"{agent_url}/v1/bench", json={"models": ["f" * 64], "config": {}})
    assert response.status_code == 404
    response = httpx.put(f"{agent_url}/v1/models/{sha}", content=b"x", params={"name": "../evil"})
    assert response.status_code == 400
    client.close()


def test_unreachable_agent_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(RuntimeBackendError, match="cannot reach the edgetune agent at"):
        bench_devices([url], [tiny_cnn()], FAST)


def _fake_agent(handler: Any) -> Any:
    return httpx.MockTransport(handler)


def test_agent_returning_a_wrong_hash_is_a_clear_error() -> None:
    def handler(request: Any) -> Any:
        if request.url.path == "/v1/info":
            return httpx.Response(200, json={"agent": "edgetune", "protocol": 1, "device": {}})
        if request.method == "PUT":
            return httpx.Response(200, json={"sha256": "1" * 64, "size": 3})
        return httpx.Response(500)

    with pytest.raises(RuntimeBackendError, match=r"reports sha256 1{16}\.\.\. for model"):
        bench_devices(["http://device.test"], [tiny_cnn()], FAST, transport=_fake_agent(handler))


def test_agent_that_benchmarked_another_file_is_caught() -> None:
    def handler(request: Any) -> Any:
        if request.url.path == "/v1/info":
            return httpx.Response(200, json={"agent": "edgetune", "protocol": 1, "device": {}})
        if request.method == "PUT":
            return httpx.Response(
                200, json={"sha256": request.url.path.rsplit("/", 1)[1], "size": 3}
            )
        return httpx.Response(200, json={"bench": {"models": []}, "models": [{"sha256": "2" * 64}]})

    with pytest.raises(RuntimeBackendError, match="as benchmarked"):
        bench_devices(["http://device.test"], [tiny_cnn()], FAST, transport=_fake_agent(handler))


def test_something_else_on_the_port_is_not_an_agent() -> None:
    transport = _fake_agent(lambda request: httpx.Response(200, json={"hello": "world"}))
    with pytest.raises(RuntimeBackendError, match="not an edgetune agent"):
        AgentClient("http://device.test", transport=transport).info()


def test_agent_will_not_bind_beyond_loopback_unless_told(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--allow-remote"):
        serve("0.0.0.0", 9, workdir=tmp_path)


def test_device_must_be_a_url() -> None:
    with pytest.raises(ConfigError, match="http"):
        AgentClient("127.0.0.1:8765")


def _start_agent(port: int, cores: int, tier: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-c",
        "from edgetune.cli import main; main()",
        "agent",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--cores",
        str(cores),
        "--tier",
        tier,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/info", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"agent at {url} did not start")


@pytest.mark.e2e
def test_two_agents_pinned_to_different_cores(tmp_path: Path) -> None:
    """Two agent processes on loopback, one on 1 core, one on 2: one table per device tier."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    model = tiny_cnn().save(tmp_path / "cnn.onnx")
    ports = [_free_port(), _free_port()]
    agents = [_start_agent(ports[0], 1, "one-core"), _start_agent(ports[1], 2, "two-core")]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url in urls:
            _wait(url)
        from click.testing import CliRunner

        from edgetune.cli import cli

        args = [
            "bench",
            str(model),
            "--runtime",
            "onnxruntime",
            "--min-seconds",
            "0.2",
            "--max-seconds",
            "1",
            "--cold-repeats",
            "1",
            "--json",
            "--device",
            urls[0],
            "--device",
            urls[1],
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        cores = {d["tier"]: d["bench"]["device"]["cores_available"] for d in report["devices"]}
        assert cores == {"one-core": 1, "two-core": 2}
        fresh = report["devices"][0]["bench"]["models"][0]["runtimes"][0]["cold_start"][
            "fresh_process"
        ]
        assert fresh["total_ms"] > 0  # the child process ran inside the pinned agent
    finally:
        for proc in agents:
            proc.terminate()
            proc.wait(timeout=10)
