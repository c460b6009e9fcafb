"""The rollout server over real HTTP on loopback: every refusal, resumable downloads, uploads,
and staged rollouts that advance, halt and roll back with real device clients."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetune.bundle.ota import operator
from edgetune.bundle.ota.client import ClientConfig, DeviceClient
from edgetune.bundle.ota.errors import OtaError
from edgetune.bundle.ota.faults import CuttingProxy
from edgetune.bundle.ota.health import ProbeData
from edgetune.bundle.ota.http import Http
from edgetune.bundle.ota.server import ServerConfig, open_fleet, running_server
from edgetune.bundle.ota.simmodels import nudge_classifier, predictions, scramble_classifier
from edgetune.bundle.ota.store import BlobStore
from edgetune.bundle.pack import BundleConfig, create_bundle
from edgetune.bundle.sign import load_private_key, load_public_key, write_keypair
from edgetune.core.model import Model
from edgetune.errors import ConfigError
from edgetune.testing.tiny import tiny_mlp, tiny_mlp_data

TOKEN = "op_" + "t" * 40


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Keys, signed bundles v1..v4 of a tiny CNN, and labelled probe data."""
    root = tmp_path_factory.mktemp("ota-world")
    key_path, pub_path = write_keypair(root / "fleet")
    key = load_private_key(key_path)
    base = tiny_mlp(features=256, hidden=256, classes=10)  # big enough for deltas to pay
    data = tiny_mlp_data(64, features=256, classes=10)
    labels = predictions(base, {"x": data["x"]})
    v2 = nudge_classifier(base, seed=1)
    models: dict[str, Model] = {"1.0.0": base, "1.1.0": v2, "1.2.0": scramble_classifier(v2),
                                "1.3.0": _nan_model(v2)}
    bundles = {}
    for version, model in models.items():
        model.save(root / f"{version}.onnx")
        bundles[version] = create_bundle(root / f"{version}.onnx", BundleConfig(
            version=version), key=key, output=root / f"{version}.etb").path
    return {"root": root, "key": key, "pub": load_public_key(pub_path), "pub_path": pub_path,
            "bundles": bundles, "probe": ProbeData({"x": data["x"]}, labels)}


def _nan_model(model: Model) -> Model:
    from onnx import numpy_helper

    proto = model.copy_proto()
    for tensor in proto.graph.initializer:
        if tensor.name == "b2":
            tensor.CopyFrom(numpy_helper.from_array(np.full(10, np.nan, np.float32), "b2"))
    return model.with_proto(proto)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    fleet = open_fleet(ServerConfig(db_url=f"sqlite:///{tmp_path / 'ota.db'}",
                                    store=tmp_path / "store"))
    with running_server(fleet, TOKEN, tick_s=0.05) as url:
        yield {"url": url, "fleet": fleet, "op": Http(url, TOKEN), "tmp": tmp_path}
    fleet.db.dispose()


def _devices(server: dict[str, Any], world: dict[str, Any], n: int) -> list[DeviceClient]:
    ids = [f"dev{i}" for i in range(n)]
    codes = operator.register(server["op"], ids)
    devices = []
    for i, device_id in enumerate(ids):
        client = DeviceClient(ClientConfig(server=server["url"], device_id=device_id,
                                           dir=server["tmp"] / device_id),
                              keys=[world["pub"]], probe=world["probe"].window(i * 5, 16))
        client.enroll(codes[device_id])
        client.bootstrap(world["bundles"]["1.0.0"])
        client.recover()
        devices.append(client)
    return devices


def _status(server: dict[str, Any], code: int, method: str, path: str, token: str | None,
            payload: Any = None) -> None:
    with pytest.raises(OtaError) as err:
        Http(server["url"], token).json(method, path, payload)
    assert err.value.status == code, str(err.value)


# -- who gets in -----------------------------------------------------------------------------------

def test_every_refusal(server: dict[str, Any], world: dict[str, Any]) -> None:
    a, b = _devices(server, world, 2)
    dev_a, dev_b = a.http.token, b.http.token
    release = operator.upload(server["op"], world["bundles"]["1.0.0"])
    operator_only = [("GET", "/v1/fleet", None), ("GET", "/v1/releases", None),
                     ("POST", "/v1/devices", {"devices": ["x"]}),
                     ("POST", "/v1/rollouts", {"release_id": release["id"], "stages": [100]}),
                     ("GET", "/v1/rollouts/1", None), ("POST", "/v1/rollouts/1/halt", {})]
    for method, path, payload in operator_only:
        _status(server, 401, method, path, None, payload)
        _status(server, 401, method, path, "dev_not-a-real-token-at-all", payload)
        _status(server, 403, method, path, dev_a, payload)
    _status(server, 403, "POST", "/v1/releases", dev_a, None)  # a device cannot push a release
    for method, path in (("GET", "/v1/device/desired"), ("GET", "/v1/device/reports")):
        _status(server, 401, method, path, None)
        _status(server, 403, method, path, TOKEN)
    _status(server, 401, "GET", f"/v1/releases/{release['id']}/bundle", None)
    _status(server, 403, "GET", "/v1/devices/dev1/reports", dev_a)  # another's reports
    _status(server, 403, "POST", "/v1/device/reports", dev_a,
            {"device_id": "dev1", "status": "ok"})  # posing as another device
    _status(server, 422, "POST", "/v1/device/reports", dev_a, {"status": "ok", "extra": 1})
    Http(server["url"], dev_b).json("POST", "/v1/device/reports", {"status": "ok"})
    assert len(Http(server["url"], dev_b).json("GET", "/v1/devices/dev1/reports")) == 1
    assert len(server["op"].json("GET", "/v1/devices/dev1/reports")) == 1
    assert Http(server["url"], dev_a).json("GET", "/v1/device/reports") == []


def test_enrollment_happens_once(server: dict[str, Any]) -> None:
    codes = operator.register(server["op"], ["cam-1", "cam-2"])
    _status(server, 403, "POST", "/v1/enroll", None, {"device_id": "cam-1", "code": "enr_wrong"})
    _status(server, 403, "POST", "/v1/enroll", None, {"device_id": "cam-9", "code": codes["cam-1"]})
    token = Http(server["url"]).json("POST", "/v1/enroll",
                                     {"device_id": "cam-1", "code": codes["cam-1"]})["token"]
    assert token.startswith("dev_")
    _status(server, 409, "POST", "/v1/enroll", None, {"device_id": "cam-1", "code": codes["cam-1"]})
    _status(server, 409, "POST", "/v1/devices", TOKEN, {"devices": ["cam-2"]})


@pytest.mark.parametrize("path", ["/v1/releases/..%2F..%2Fetc%2Fpasswd/bundle",
                                  "/v1/releases/1/..%2F..%2Fota.db", "/v1/releases/1/etb",
                                  "/v1/releases/%2E%2E/bundle", "/v1/releases/99/bundle"])
def test_no_file_outside_the_store(server: dict[str, Any], world: dict[str, Any],
                                   path: str) -> None:
    (device,) = _devices(server, world, 1)
    operator.upload(server["op"], world["bundles"]["1.0.0"])
    with pytest.raises(OtaError) as err:
        device.http.json("GET", path)
    assert err.value.status in (404, 422)


def test_store_only_resolves_digests(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    for name in ("../../etc/passwd", "a" * 63, "A" * 64, "../" + "a" * 61, ""):
        with pytest.raises(ConfigError):
            store.path(name, "etb")
    with pytest.raises(ConfigError):
        store.path("a" * 64, "../etb")
    assert store.path("a" * 64, "etb").parent == (tmp_path / "store" / "blobs").resolve()


# -- releases and downloads --------------------------------------------------------------------

def test_upload_refusals(server: dict[str, Any], world: dict[str, Any], tmp_path: Path) -> None:
    bundles = world["bundles"]
    tampered = tmp_path / "t.etb"
    data = bytearray(bundles["1.1.0"].read_bytes())
    data[-1500] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(OtaError, match="tampered"):
        operator.upload(server["op"], tampered)
    devices = _devices(server, world, 1)
    first = operator.release(server["op"], bundles["1.1.0"], [100])
    with pytest.raises(OtaError) as err:
        operator.upload(server["op"], bundles["1.1.0"])
    assert err.value.status == 409
    with pytest.raises(OtaError) as err:  # one rollout at a time
        operator.start(server["op"], first["release_id"], [100])
    assert err.value.status == 409
    assert _wait(server, first["id"], devices)["state"] == "complete"
    with pytest.raises(OtaError) as err:  # not newer than the fleet's version
        operator.upload(server["op"], bundles["1.0.0"])
    assert err.value.status == 409


def test_server_with_keys_refuses_other_signers(tmp_path: Path, world: dict[str, Any]) -> None:
    _, other = write_keypair(tmp_path / "other")
    fleet = open_fleet(ServerConfig(db_url=f"sqlite:///{tmp_path / 'k.db'}", store=tmp_path / "s",
                                    keys=(other,)))
    with running_server(fleet, TOKEN) as url, pytest.raises(OtaError, match="bad-signature"):
        operator.upload(Http(url, TOKEN), world["bundles"]["1.0.0"])


def test_interrupted_downloads_resume(server: dict[str, Any], world: dict[str, Any],
                                      tmp_path: Path) -> None:
    (device,) = _devices(server, world, 1)
    release = operator.upload(server["op"], world["bundles"]["1.1.0"])
    port = int(server["url"].rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=release["size"] // 4)
    try:
        flaky = Http(f"http://127.0.0.1:{proxy.port}", device.http.token)
        target = tmp_path / "b.part"
        attempts = 0
        while not target.exists() or target.stat().st_size < release["size"]:
            attempts += 1
            try:
                flaky.download(f"/v1/releases/{release['id']}/bundle", target, release["size"])
            except OtaError as exc:
                assert exc.status == 503 and attempts < 20
    finally:
        proxy.close()
    assert attempts > 2 and proxy.cuts >= attempts - 1
    assert target.read_bytes() == world["bundles"]["1.1.0"].read_bytes()


# -- rollouts with real devices ------------------------------------------------------------------

def _wait(server: dict[str, Any], rollout_id: int, devices: list[DeviceClient] = (),  # type: ignore[assignment]
          timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = operator.rollout(server["op"], rollout_id)
        if status["state"] != "running":
            return status
        for device in devices:
            device.poll_once()
        time.sleep(0.05)
    raise AssertionError(f"rollout {rollout_id} still running: {status}")


def _settle(devices: list[DeviceClient], rounds: int = 3) -> list[str]:
    for _ in range(rounds):
        for device in devices:
            device.poll_once()
    return [d.active()["version"] for d in devices]


def test_good_release_advances_and_bad_one_rolls_back(server: dict[str, Any],
                                                      world: dict[str, Any]) -> None:
    devices = _devices(server, world, 8)
    bundles, op = world["bundles"], server["op"]
    policy = {"min_control": 2}
    baseline = operator.release(op, bundles["1.0.0"], [100], policy)
    assert _wait(server, baseline["id"], devices)["state"] == "complete"
    good = operator.release(op, bundles["1.1.0"], [25, 50, 100], policy)
    done = _wait(server, good["id"], devices)
    assert done["state"] == "complete" and [d["action"] for d in done["decisions"]] == [
        "advance"] * 3
    assert _settle(devices) == ["1.1.0"] * 8
    assert sum(d.counters.get("delta", 0) for d in devices) >= 6  # base was the fleet version
    bad = operator.release(op, bundles["1.2.0"], [25, 50, 100], policy)
    halted = _wait(server, bad["id"], devices)
    assert halted["state"] == "halted" and halted["stage"] == 0
    assert "error rate" in halted["reason"]
    assert _settle(devices) == ["1.1.0"] * 8
    assert sum(d.counters.get("reverted", 0) for d in devices) == 2  # the two canaries
    assert operator.fleet_summary(op)["versions"] == {"1.1.0": 8}


def test_failed_health_check_reverts_on_the_device(server: dict[str, Any],
                                                   world: dict[str, Any]) -> None:
    devices = _devices(server, world, 4)
    bundles, op = world["bundles"], server["op"]
    assert _wait(server, operator.release(op, bundles["1.0.0"], [100])["id"], devices)[
        "state"] == "complete"
    broken = operator.release(op, bundles["1.3.0"], [50, 100], {"min_control": 1})
    halted = _wait(server, broken["id"], devices)
    assert halted["state"] == "halted" and "health_failed" in halted["reason"]
    assert _settle(devices) == ["1.0.0"] * 4
    assert sum(d.counters.get("health_failed", 0) for d in devices) >= 1


def test_operator_halt_sends_updated_devices_back(server: dict[str, Any],
                                                  world: dict[str, Any]) -> None:
    devices = _devices(server, world, 4)
    bundles, op = world["bundles"], server["op"]
    _wait(server, operator.release(op, bundles["1.0.0"], [100])["id"], devices)
    slow = operator.release(op, bundles["1.1.0"], [50, 100], {"min_control": 1, "soak_s": 600})
    _settle(devices, rounds=2)
    assert sorted(d.active()["version"] for d in devices) == ["1.0.0"] * 2 + ["1.1.0"] * 2
    operator.halt(op, slow["id"], "manual test")
    assert _settle(devices) == ["1.0.0"] * 4


def test_operator_cli(server: dict[str, Any], world: dict[str, Any], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgetune.cli import cli

    (tmp_path / "op.token").write_text(TOKEN + "\n")
    common = ["--server", server["url"], "--token-file", str(tmp_path / "op.token")]

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["ota", *args, *common], catch_exceptions=False)

    registered = run("register", "cam-1", "cam-2", "--json")
    assert registered.exit_code == 0 and set(json.loads(registered.output)) == {"cam-1", "cam-2"}
    Http(server["url"]).json("POST", "/v1/enroll", {
        "device_id": "cam-1", "code": json.loads(registered.output)["cam-1"]})
    released = run("release", str(world["bundles"]["1.0.0"]), "--stages", "50,100",
                   "--min-control", "1")
    assert released.exit_code == 0 and "rollout 1 of 1.0.0 started" in released.output
    status = run("status", "--json")
    assert json.loads(status.output)["latest_rollout"]["state"] == "running"
    halted = run("halt", "1", "--reason", "cli test")
    assert halted.exit_code == 0
    assert "halted by operator: cli test" in run("status", "1").output
    refused = CliRunner().invoke(cli, ["ota", "status", "--server", server["url"],
                                       "--token-file", str(world["pub_path"])])
    assert refused.exit_code == 2 and "single-line token" in refused.output
    (tmp_path / "wrong.token").write_text("op_" + "w" * 40)
    unknown = CliRunner().invoke(cli, ["ota", "status", "--server", server["url"],
                                       "--token-file", str(tmp_path / "wrong.token")])
    assert unknown.exit_code == 1 and "HTTP 401" in unknown.output
