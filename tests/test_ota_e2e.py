"""End to end: the fleet simulation, the server killed with SIGKILL mid-rollout, a real
PostgreSQL, and device clients killed with SIGKILL at random moments."""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetune.bundle.ota import operator
from edgetune.bundle.ota.client import ClientConfig, DeviceClient
from edgetune.bundle.ota.health import ProbeData
from edgetune.bundle.ota.http import Http
from edgetune.bundle.ota.server import ServerConfig, open_fleet, running_server
from edgetune.bundle.ota.simmodels import make_releases, predictions
from edgetune.bundle.ota.simulate import ServerProcess, SimConfig, free_port, run_simulation
from edgetune.bundle.pack import verify_dir
from edgetune.bundle.sign import load_public_key
from edgetune.testing.tiny import tiny_mlp, tiny_mlp_data

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ota-e2e")
    model = tiny_mlp(features=256, hidden=256, classes=10)
    data = tiny_mlp_data(400, features=256, classes=10)
    probe = ProbeData({"x": data["x"]}, predictions(model, {"x": data["x"]}))
    bundles, _, pub = make_releases(root, model, None)
    return {"root": root, "bundles": bundles, "pub": load_public_key(pub), "pub_path": pub,
            "probe": probe}


def test_fleet_simulation(releases: dict[str, Any], tmp_path: Path) -> None:
    config = SimConfig(devices=40, poll_interval_s=0.5, probe_samples=16)
    result = run_simulation(tmp_path, releases["bundles"], [releases["pub"]], releases["probe"],
                            config)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, failed
    assert len(result.checks) == 7
    assert result.counters["resumed"] > 0 and result.counters["connections_cut"] > 0
    assert result.counters["delta"] > 0 and result.counters["reverted"] >= 1


def _devices(url: str, op: Http, releases: dict[str, Any], root: Path, n: int
             ) -> list[DeviceClient]:
    codes = operator.register(op, [f"d{i}" for i in range(n)])
    devices = []
    for i in range(n):
        client = DeviceClient(ClientConfig(server=url, device_id=f"d{i}", dir=root / f"d{i}"),
                              keys=[releases["pub"]], probe=releases["probe"].window(i * 9, 16))
        client.enroll(codes[f"d{i}"])
        client.bootstrap(releases["bundles"]["v1"])
        client.recover()
        devices.append(client)
    return devices


def _drive(op: Http, rollout_id: int, devices: list[DeviceClient], timeout_s: float = 90.0
           ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for device in devices:
            device.poll_once()
        status = operator.rollout(op, rollout_id)
        if status["state"] != "running":
            for device in devices:
                device.poll_once()
            return status
        time.sleep(0.1)
    raise AssertionError(f"rollout {rollout_id} did not finish")


def test_server_sigkill_mid_rollout_resumes(releases: dict[str, Any], tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", tick_s=0.1)
    server.start()
    try:
        op = server.operator()
        devices = _devices(server.url, op, releases, tmp_path, 6)
        _drive(op, operator.release(op, releases["bundles"]["v1"], [100])["id"], devices)
        rollout = operator.release(op, releases["bundles"]["v2"], [20, 50, 100],
                                   {"min_control": 1, "soak_s": 1.0})
        deadline = time.monotonic() + 90
        while operator.rollout(op, rollout["id"])["stage"] < 1:
            assert time.monotonic() < deadline, "stage 1 never advanced"
            for device in devices:
                device.poll_once()
        before = operator.rollout(op, rollout["id"])
        server.kill()
        assert all(d.poll_once() == "retry" for d in devices)  # server gone: nothing breaks
        server.start()
        op = server.operator()
        after = operator.rollout(op, rollout["id"])
        assert (after["state"], after["stage"]) == ("running", before["stage"])
        assert after["decisions"] == before["decisions"]
        done = _drive(op, rollout["id"], devices)
        assert done["state"] == "complete" and len(done["decisions"]) == 3
        assert {d.active()["version"] for d in devices} == {"1.1.0"}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port, owned by the 'postgres' user when
    this runs as root (initdb refuses root)."""
    found = shutil.which("initdb") or next(iter(sorted(glob.glob(
        "/usr/lib/postgresql/*/bin/initdb"))), None)
    if found is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; install "
                    "them with: apt-get install -y postgresql")
    bindir = Path(found).resolve().parent
    root = Path(tempfile.mkdtemp(prefix="edgetune-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "edgetune", "--auth=trust")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://edgetune@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_rollout_on_postgresql(postgres: str, releases: dict[str, Any], tmp_path: Path) -> None:
    fleet = open_fleet(ServerConfig(db_url=postgres, store=tmp_path / "store"))
    assert fleet.db.engine.dialect.name == "postgresql"
    token = "op_" + "p" * 40
    with running_server(fleet, token, tick_s=0.1) as url:
        op = Http(url, token)
        devices = _devices(url, op, releases, tmp_path, 5)
        assert _drive(op, operator.release(op, releases["bundles"]["v1"], [100])["id"],
                      devices)["state"] == "complete"
        good = _drive(op, operator.release(op, releases["bundles"]["v2"], [40, 100],
                                           {"min_control": 1})["id"], devices)
        assert good["state"] == "complete"
        bad = _drive(op, operator.release(op, releases["bundles"]["v3"], [40, 100],
                                          {"min_control": 1})["id"], devices)
        assert bad["state"] == "halted" and bad["stage"] == 0
        for device in devices:
            device.poll_once()
        assert operator.fleet_summary(op)["versions"] == {"1.1.0": 5}
        with pytest.raises(Exception, match="409"):
            operator.register(op, ["d0"])
    fleet.db.dispose()


def test_client_sigkill_at_random_moments_keeps_a_working_model(releases: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, f"sqlite:///{tmp_path / 'ota.db'}", tick_s=0.1)
    server.start()
    try:
        op = server.operator()
        code = operator.register(op, ["dev"])["dev"]
        np.savez(tmp_path / "probe.npz", x=releases["probe"].feeds["x"][:16])
        versions = ["v2", "v4", "v5"]
        cli = [sys.executable, "-c", "from edgetune.cli import main; main()", "ota", "client",
               "--server", server.url, "--device-id", "dev", "--dir", str(tmp_path / "dev"),
               "--key", str(releases["pub_path"]), "--probe", str(tmp_path / "probe.npz"),
               "--interval", "0.2"]
        subprocess.run([*cli, "--enroll-code", code, "--bootstrap",
                        str(releases["bundles"]["v1"]), "--once"], check=True, timeout=120,
                       capture_output=True)
        _until_complete(op, operator.release(op, releases["bundles"]["v1"], [100])["id"], cli)
        rng = random.Random(7)
        for name in versions:
            rollout = operator.release(op, releases["bundles"][name], [100])
            for _ in range(3):
                child = subprocess.Popen(cli, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.5, 4.0))
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                _assert_device_works(tmp_path / "dev", releases)
            _until_complete(op, rollout["id"], cli)
        final = _assert_device_works(tmp_path / "dev", releases)
        assert final == "1.4.0"
    finally:
        server.stop()


def _until_complete(op: Http, rollout_id: int, cli: list[str]) -> None:
    for _ in range(10):
        subprocess.run([*cli, "--once"], check=True, timeout=120, capture_output=True)
        time.sleep(0.3)
        if operator.rollout(op, rollout_id)["state"] == "complete":
            return
    raise AssertionError(f"rollout {rollout_id} did not complete")


def _assert_device_works(folder: Path, releases: dict[str, Any]) -> str:
    """What a rebooted device sees: recovery leaves a verified model that runs."""
    device = DeviceClient(ClientConfig(server="http://127.0.0.1:9", device_id="dev", dir=folder),
                          keys=[releases["pub"]], probe=releases["probe"].window(0, 8))
    state = device.recover()
    assert state["active"] is not None and not state["pending"]
    verify_dir(device.slots.model_dir(state["active"]), keys=device.keys)
    assert device.check() == (True, "")
    return str(state["version"])
