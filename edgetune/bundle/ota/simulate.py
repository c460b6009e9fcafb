"""A fleet on loopback: the real server process, hundreds of device clients, real models.

Used by ``bench/ota_fleet.py`` (200 devices) and the end-to-end test (fewer). Devices are
:class:`~edgetune.bundle.ota.client.DeviceClient` threads in this process, each with its own
folder, credential, slots and share of the probe data; a fifth of them sit behind a proxy that
cuts every connection part-way, and download full bundles, so their downloads break and resume.
The server runs as a separate process so it can be killed with SIGKILL.

Phases: a baseline release reaches every device; a good release (classifier retrained) goes
through the stages to 100%; a bad one (classes shifted: loads, runs, confident, wrong) must halt
at the canary stage with every device back on the good version; another good release runs while
the server is killed mid-rollout and restarted; a tampered bundle must be refused by every
device; and a battery of requests with wrong credentials must all be refused.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from edgetune.bundle.ota import operator
from edgetune.bundle.ota.client import ClientConfig, DeviceClient
from edgetune.bundle.ota.errors import OtaError
from edgetune.bundle.ota.faults import CuttingProxy
from edgetune.bundle.ota.health import ProbeData
from edgetune.bundle.ota.http import Http
from edgetune.bundle.pack import verify_dir
from edgetune.bundle.sign import VerifyKey

__all__ = ["Check", "SimConfig", "SimResult", "run_simulation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    devices: int = 200
    flaky_fraction: float = 0.2
    """Share of devices behind the download-cutting proxy (and without deltas)."""
    poll_interval_s: float = 1.0
    probe_samples: int = 32
    stages: tuple[int, ...] = (1, 10, 100)
    phase_timeout_s: float = 150.0
    tick_s: float = 0.25
    db_url: str | None = None
    """Default: SQLite in the work folder."""
    max_latency_ratio: float = 4.0
    """Loose on purpose: here every 'device' shares the same two cores, so one device's latency
    says more about its neighbours than about its model."""


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(kw_only=True)
class SimResult:
    checks: list[Check] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        log.info("%s %s: %s", "PASS" if ok else "FAIL", name, detail)
        self.checks.append(Check(name=name, ok=ok, detail=detail))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``edgetune ota server`` as a child process, killable with SIGKILL and restartable."""

    def __init__(self, workdir: Path, db_url: str, tick_s: float, keys: tuple[Path, ...] = ()
                 ) -> None:
        self.workdir, self.db_url, self.tick_s, self.keys = workdir, db_url, tick_s, keys
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_file = workdir / "operator.token"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        args = [sys.executable, "-c", "from edgetune.cli import main; main()", "ota", "server",
                "--db", self.db_url, "--port", str(self.port), "--store",
                str(self.workdir / "store"), "--token-file", str(self.token_file),
                "--tick", str(self.tick_s), *[a for k in self.keys for a in ("--key", str(k))]]
        log_file = (self.workdir / "server.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        deadline = time.monotonic() + timeout_s
        probe = Http(self.url, timeout=2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OtaError(f"server exited with {self.proc.returncode}; see "
                               f"{self.workdir / 'server.log'}")
            try:
                probe.json("GET", "/v1/health")
                return
            except OtaError:
                time.sleep(0.1)
        raise OtaError(f"server did not answer within {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, exactly like a crash."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None

    def operator(self) -> Http:
        return Http(self.url, self.token_file.read_text(encoding="utf-8").strip())


@dataclass(kw_only=True)
class Device:
    client: DeviceClient
    flaky: bool
    thread: threading.Thread | None = None


class Fleet:
    """The device clients and the threads that run them."""

    def __init__(self, workdir: Path, server: ServerProcess, keys: list[VerifyKey],
                 probe: ProbeData, config: SimConfig, cut_after: int) -> None:
        self.stop = threading.Event()
        self.proxy = CuttingProxy(server.port, cut_after=cut_after)
        self.devices: list[Device] = []
        ids = [f"dev{i:04d}" for i in range(config.devices)]
        codes = operator.register(server.operator(), ids)
        n_flaky = round(config.flaky_fraction * config.devices)
        for i, device_id in enumerate(ids):
            flaky = i < n_flaky
            url = f"http://127.0.0.1:{self.proxy.port}" if flaky else server.url
            client = DeviceClient(
                ClientConfig(server=url, device_id=device_id, dir=workdir / "devices" / device_id,
                             poll_interval_s=config.poll_interval_s, use_delta=not flaky),
                keys=keys, probe=probe.window(i * 7, config.probe_samples))
            _retry(partial(client.enroll, codes[device_id]))
            self.devices.append(Device(client=client, flaky=flaky))

    def bootstrap(self, bundle: Path) -> None:
        for device in self.devices:
            device.client.bootstrap(bundle)
            device.client.recover()

    def start(self) -> None:
        for device in self.devices:
            device.thread = threading.Thread(target=device.client.run, args=(self.stop,),
                                             daemon=True)
            device.thread.start()

    def join(self) -> None:
        self.stop.set()
        for device in self.devices:
            if device.thread is not None:
                device.thread.join(timeout=30)
        self.proxy.close()

    def versions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self.devices:
            current = device.client.slots.state.current
            key = current.version if current else "none"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def counter(self, name: str) -> int:
        return sum(d.client.counters.get(name, 0) for d in self.devices)


def _retry(action: Callable[[], Any], tries: int = 5) -> Any:
    for attempt in range(tries):
        try:
            return action()
        except OtaError:
            if attempt == tries - 1:
                raise
            time.sleep(0.2)
    return None


def wait_for(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OtaError as exc:
            log.debug("waiting: %s", exc)
        time.sleep(every_s)
    return False


# -- phases ---------------------------------------------------------------------------------------

def _policy(config: SimConfig, **overrides: Any) -> dict[str, Any]:
    return {"max_latency_ratio": config.max_latency_ratio, "stage_timeout_s": 120.0,
            **overrides}


def _finished(op: Http, rollout_id: int, timeout_s: float) -> dict[str, Any]:
    status: dict[str, Any] = {}

    def done() -> bool:
        status.update(operator.rollout(op, rollout_id))
        return status["state"] != "running"

    wait_for(done, timeout_s)
    return status


def _all_on(fleet: Fleet, version: str, timeout_s: float, expected: bool = True) -> bool:
    """Wait for every device to run ``version``; briefly when the rollout already failed."""
    return wait_for(lambda: fleet.versions() == {version: len(fleet.devices)},
                    timeout_s if expected else min(timeout_s, 10.0))


def _baseline(op: Http, fleet: Fleet, bundle: Path, config: SimConfig, result: SimResult) -> str:
    started = operator.release(op, bundle, (100,), _policy(config))
    status = _finished(op, started["id"], config.phase_timeout_s)
    result.add("baseline release", status.get("state") == "complete",
               f"{status.get('version')} {status.get('state')} on {fleet.versions()}")
    return str(status.get("version"))


def _good(op: Http, fleet: Fleet, bundle: Path, config: SimConfig, result: SimResult) -> str:
    started = operator.release(op, bundle, config.stages, _policy(config))
    status = _finished(op, started["id"], config.phase_timeout_s)
    version = str(status.get("version"))
    everyone = _all_on(fleet, version, config.phase_timeout_s, status.get("state") == "complete")
    stages = [f"stage {d['stage'] + 1}: {d['action']}" for d in status.get("decisions", [])]
    result.add("good release reaches 100%", status.get("state") == "complete" and everyone,
               f"{version} {status.get('state')}; {'; '.join(stages)}; devices "
               f"{fleet.versions()}")
    return version


def _bad(op: Http, fleet: Fleet, bundle: Path, previous: str, config: SimConfig,
         result: SimResult) -> None:
    started = operator.release(op, bundle, config.stages, _policy(config))
    status = _finished(op, started["id"], config.phase_timeout_s)
    back = _all_on(fleet, previous, config.phase_timeout_s, status.get("state") == "halted")
    ok = status.get("state") == "halted" and status.get("stage") == 0 and back
    result.add("regression halts at the canary stage and rolls back", ok,
               f"{status.get('version')} {status.get('state')} at stage "
               f"{status.get('stage', -1) + 1} ({status.get('reason')}); devices "
               f"{fleet.versions()}")


def _crash(op: Http, server: ServerProcess, fleet: Fleet, bundle: Path, config: SimConfig,
           result: SimResult) -> str:
    started = operator.release(op, bundle, config.stages, _policy(config, soak_s=3.0))
    rollout_id = started["id"]
    reached = wait_for(lambda: operator.rollout(op, rollout_id)["stage"] >= 1,
                       config.phase_timeout_s)
    before = operator.rollout(op, rollout_id)
    server.kill()
    time.sleep(2.0)
    server.start()
    op = server.operator()
    resumed = operator.rollout(op, rollout_id)
    status = _finished(op, rollout_id, config.phase_timeout_s)
    version = str(status.get("version"))
    everyone = _all_on(fleet, version, config.phase_timeout_s, status.get("state") == "complete")
    ok = reached and resumed["stage"] >= before["stage"] and status.get("state") == "complete"
    result.add("server killed (SIGKILL) mid-rollout resumes", ok and everyone,
               f"killed at stage {before['stage'] + 1} ({before['state']}), restarted at stage "
               f"{resumed['stage'] + 1}, ended {status.get('state')}; devices {fleet.versions()}")
    return version


def _flip_byte(path: Path, entry_suffix: str) -> None:
    """Change one byte in the middle of the first archive entry ending in ``entry_suffix``."""
    from edgetune.bundle.archive import iter_entries

    target = next(e for e in iter_entries(path) if e.name.endswith(entry_suffix))
    with path.open("r+b") as handle:
        handle.seek(target.offset + target.size // 2)
        byte = handle.read(1)
        handle.seek(target.offset + target.size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))


def _tampered(op: Http, server: ServerProcess, fleet: Fleet, bundle: Path, current: str,
              config: SimConfig, result: SimResult) -> None:
    stored = operator.upload(op, bundle)
    store = server.workdir / "store" / "blobs"
    _flip_byte(store / f"{stored['sha256']}.etb", ".onnx")
    for delta in store.glob("*.etd"):
        _flip_byte(delta, "data.bin")
    before = fleet.counter("rejected")
    policy = _policy(config, fail_fast=False)
    started = operator.start(op, int(stored["id"]), (100,), policy)
    status = _finished(op, started["id"], config.phase_timeout_s)
    refused = sum(1 for d in fleet.devices if d.client.counters.get("rejected", 0) > 0)
    stayed = _all_on(fleet, current, config.phase_timeout_s)
    ok = status.get("state") == "halted" and refused == len(fleet.devices) and stayed
    result.add("tampered bundle refused by every device", ok,
               f"{refused} of {len(fleet.devices)} devices refused it "
               f"({fleet.counter('rejected') - before} refusals); rollout "
               f"{status.get('state')}; devices {fleet.versions()}")


def _refusals(server: ServerProcess, fleet: Fleet, result: SimResult) -> None:
    """Requests without the right credential: each must be refused (401, 403, 404 or 409)."""
    me, other = fleet.devices[-1].client, fleet.devices[-2].client
    nobody, forged = Http(server.url), Http(server.url, "dev_forged-token-0123456789")
    device, op = Http(server.url, me.http.token), server.operator()
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("fleet status without a credential", lambda: nobody.json("GET", "/v1/fleet")),
        ("fleet status with a device token", lambda: device.json("GET", "/v1/fleet")),
        ("release upload by a device", lambda: device.json("POST", "/v1/releases", body=b"x")),
        ("rollout start by a device", lambda: device.json(
            "POST", "/v1/rollouts", {"release_id": 1, "stages": [100]})),
        ("halt by a device", lambda: device.json("POST", "/v1/rollouts/1/halt", {})),
        ("device reads another's reports", lambda: device.json(
            "GET", f"/v1/devices/{other.config.device_id}/reports")),
        ("device reports as another", lambda: device.json("POST", "/v1/device/reports", {
            "device_id": other.config.device_id, "status": "ok"})),
        ("operator token as a device", lambda: op.json("GET", "/v1/device/desired")),
        ("forged device token", lambda: forged.json("GET", "/v1/device/desired")),
        ("download without a credential", lambda: nobody.json("GET", "/v1/releases/1/bundle")),
        ("second enrollment", lambda: nobody.json("POST", "/v1/enroll", {
            "device_id": me.config.device_id, "code": "enr_guess"})),
        ("path traversal in a download", lambda: device.json(
            "GET", "/v1/releases/..%2F..%2F..%2Fetc%2Fpasswd/bundle")),
        ("path traversal in a kind", lambda: device.json(
            "GET", "/v1/releases/1/..%2F..%2Fota.db")),
    ]
    refused = [name for name, attempt in attempts if _refused(attempt)]
    missed = [name for name, _ in attempts if name not in refused]
    result.add("requests without the right credential are refused", not missed,
               f"{len(refused)} of {len(attempts)} refused" + (f"; NOT refused: {missed}"
                                                               if missed else ""))


def _refused(attempt: Callable[[], Any]) -> bool:
    try:
        attempt()
    except OtaError as exc:
        return exc.status in (401, 403, 404, 409, 422)
    return False


def _final(op: Http, fleet: Fleet, version: str, result: SimResult) -> None:
    broken = []
    for device in fleet.devices:
        state = device.client.slots.state
        try:
            verify_dir(device.client.slots.model_dir(state.active or "a"),
                       keys=device.client.keys)
            healthy, _ = device.client.check()
        except Exception:  # any failure here means the device has no working model
            healthy = False
        if not healthy or state.pending:
            broken.append(device.client.config.device_id)
    summary = operator.fleet_summary(op)
    ok = not broken and summary["versions"] == {version: len(fleet.devices)}
    result.add("nothing lost, every device on a verified working model", ok,
               f"{len(fleet.devices) - len(broken)} of {len(fleet.devices)} devices verified and "
               f"healthy; server sees {summary['versions']}")


def run_simulation(workdir: Path, bundles: dict[str, Path], keys: list[VerifyKey],
                   probe: ProbeData, config: SimConfig) -> SimResult:
    """Run every phase; ``bundles`` holds v1 (factory), v2 (good), v3 (bad), v4 (good), v5
    (to be tampered with), signed with the key whose public half is in ``keys``."""
    started = time.monotonic()
    result = SimResult()
    db_url = config.db_url or f"sqlite:///{workdir / 'ota.db'}"
    server = ServerProcess(workdir, db_url, config.tick_s)
    server.start()
    fleet: Fleet | None = None
    try:
        cut_after = max(4096, bundles["v1"].stat().st_size // 3)  # about three tries a download
        fleet = Fleet(workdir, server, keys, probe, config, cut_after)
        fleet.bootstrap(bundles["v1"])
        fleet.start()
        op = server.operator()
        _baseline(op, fleet, bundles["v1"], config, result)
        good = _good(op, fleet, bundles["v2"], config, result)
        _bad(op, fleet, bundles["v3"], good, config, result)
        latest = _crash(op, server, fleet, bundles["v4"], config, result)
        op = server.operator()
        _tampered(op, server, fleet, bundles["v5"], latest, config, result)
        _refusals(server, fleet, result)
        _final(op, fleet, latest, result)
        result.counters = {name: fleet.counter(name) for name in (
            "installed", "reverted", "rejected", "health_failed", "delta", "full", "resumed")}
        result.counters["connections_cut"] = fleet.proxy.cuts
    finally:
        if fleet is not None:
            fleet.join()
        server.stop()
    result.seconds = time.monotonic() - started
    return result
