"""The device client: a power cut at any step leaves a verified working model; the device
refuses rollbacks and recovers from a lost state file or a corrupted slot."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgetune.bundle.ota import operator
from edgetune.bundle.ota.client import ClientConfig, DeviceClient
from edgetune.bundle.ota.health import ProbeData
from edgetune.bundle.ota.http import Http
from edgetune.bundle.ota.server import ServerConfig, open_fleet, running_server
from edgetune.bundle.ota.simmodels import nudge_classifier, predictions
from edgetune.bundle.pack import BundleConfig, create_bundle, verify_dir
from edgetune.bundle.sign import load_private_key, load_public_key, write_keypair
from edgetune.testing.tiny import tiny_mlp, tiny_mlp_data

TOKEN = "op_" + "c" * 40


class PowerCut(BaseException):
    """Raised at a chosen step: nothing after it runs, like pulling the plug."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with 1.0.0 as the fleet version and a rollout of 1.1.0 running, and one enrolled
    device folder running 1.0.0 with 0.9.0 in its other slot (the 'golden' image every
    power-cut run starts from, so an install has to clear a slot first)."""
    root = tmp_path_factory.mktemp("ota-client")
    key_path, pub_path = write_keypair(root / "fleet")
    key, pub = load_private_key(key_path), load_public_key(pub_path)
    base = tiny_mlp(features=128, hidden=128, classes=10)
    data = tiny_mlp_data(16, features=128, classes=10)
    probe = ProbeData({"x": data["x"]}, predictions(base, {"x": data["x"]}))
    bundles = {}
    for version, model in (("0.9.0", nudge_classifier(base, seed=9)), ("1.0.0", base),
                           ("1.1.0", nudge_classifier(base))):
        model.save(root / f"{version}.onnx")
        bundles[version] = create_bundle(root / f"{version}.onnx", BundleConfig(version=version),
                                         key=key, output=root / f"{version}.etb").path
    fleet = open_fleet(ServerConfig(db_url=f"sqlite:///{root / 'ota.db'}", store=root / "store"))
    with running_server(fleet, TOKEN, tick_s=0.05) as url:
        op = Http(url, TOKEN)
        code = operator.register(op, ["dev0"])["dev0"]
        golden = root / "golden"
        device = _client(url, golden, pub, probe)
        device.enroll(code)
        device.bootstrap(bundles["0.9.0"])
        baseline = operator.release(op, bundles["1.0.0"], [100])
        for _ in range(100):
            device.poll_once()
            if operator.rollout(op, baseline["id"])["state"] == "complete":
                break
        release = operator.upload(op, bundles["1.1.0"])
        operator.start(op, release["id"], [100], {"soak_s": 3600})  # stays running
        yield {"url": url, "golden": golden, "pub": pub, "probe": probe, "root": root,
               "bundles": bundles, "delta": release["delta_size"]}
    fleet.db.dispose()


def _client(url: str, folder: Path, pub: Any, probe: ProbeData, step: Any = None,
            use_delta: bool = True) -> DeviceClient:
    config = ClientConfig(server=url, device_id="dev0", dir=folder, use_delta=use_delta)
    return DeviceClient(config, keys=[pub], probe=probe, step=step)


def _assert_working(client: DeviceClient, versions: set[str]) -> str:
    state = client.slots.state
    assert state.active is not None and not state.pending
    assert state.current is not None and state.current.version in versions
    assert verify_dir(client.slots.model_dir(state.active), keys=client.keys).version == \
        state.current.version
    assert client.check() == (True, "")
    return state.current.version


def _steps(setup: dict[str, Any], folder: Path, use_delta: bool) -> list[str]:
    shutil.copytree(setup["golden"], folder)
    seen: list[str] = []
    client = _client(setup["url"], folder, setup["pub"], setup["probe"], seen.append, use_delta)
    client.recover()
    assert client.poll_once() == "installed"
    return seen


@pytest.mark.parametrize("use_delta", [True, False])
def test_power_cut_at_every_step_leaves_a_working_model(setup: dict[str, Any], tmp_path: Path,
                                                        use_delta: bool) -> None:
    steps = _steps(setup, tmp_path / "probe-run", use_delta)
    assert {"download:chunk", "state:forget:written", "slot:moved-to-trash", "install:unpacked",
            "state:switch:written", "state:commit:renamed"} <= set(steps)
    for cut in range(len(steps)):
        folder = tmp_path / f"cut-{cut}"
        shutil.copytree(setup["golden"], folder)
        calls = iter(range(len(steps) + 1))

        def plug(name: str, cut: int = cut, calls: Any = calls) -> None:
            if next(calls) == cut:
                raise PowerCut(name)

        with pytest.raises(PowerCut):
            _client(setup["url"], folder, setup["pub"], setup["probe"], plug,
                    use_delta).poll_once()
        rebooted = _client(setup["url"], folder, setup["pub"], setup["probe"],
                           use_delta=use_delta)
        rebooted.recover()
        _assert_working(rebooted, {"1.0.0", "1.1.0"})
        for _ in range(3):
            rebooted.poll_once()
        assert _assert_working(rebooted, {"1.1.0"}) == "1.1.0", f"after a cut at {steps[cut]}"


def test_delta_was_used_when_offered(setup: dict[str, Any], tmp_path: Path) -> None:
    assert setup["delta"] is not None
    shutil.copytree(setup["golden"], tmp_path / "d")
    client = _client(setup["url"], tmp_path / "d", setup["pub"], setup["probe"])
    client.recover()
    assert client.poll_once() == "installed" and client.counters == {"delta": 1, "installed": 1}


def test_device_refuses_an_older_bundle(setup: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(setup["golden"], tmp_path / "d")
    client = _client(setup["url"], tmp_path / "d", setup["pub"], setup["probe"])
    client.recover()
    client.poll_once()
    assert client.active()["version"] == "1.1.0"
    old = setup["bundles"]["1.0.0"]
    from edgetune.bundle.pack import file_sha256

    offer = {"sha256": file_sha256(old), "size": old.stat().st_size, "version": "1.0.0",
             "url": "/v1/releases/1/bundle"}
    outcome, reason = client._install(offer)  # a server (or attacker) offering a downgrade
    assert outcome == "rejected" and reason.startswith("rollback:")
    assert client.active()["version"] == "1.1.0"


def test_recovery_from_lost_state_and_corrupted_slot(setup: dict[str, Any],
                                                     tmp_path: Path) -> None:
    shutil.copytree(setup["golden"], tmp_path / "d")
    client = _client(setup["url"], tmp_path / "d", setup["pub"], setup["probe"])
    client.recover()
    client.poll_once()
    active = client.slots.state.active
    assert active is not None and client.slots.state.previous is not None
    (tmp_path / "d" / "state.json").unlink()
    rebuilt = _client(setup["url"], tmp_path / "d", setup["pub"], setup["probe"])
    rebuilt.recover()
    assert _assert_working(rebuilt, {"1.1.0"}) == "1.1.0"

    shutil.copytree(setup["golden"], tmp_path / "e")
    client = _client(setup["url"], tmp_path / "e", setup["pub"], setup["probe"])
    client.recover()
    client.poll_once()
    model = client.slots.model_dir(client.slots.state.active or "") / "1.1.0.onnx"
    with model.open("r+b") as handle:  # bit rot in the active slot
        handle.seek(100)
        handle.write(b"\xff\xff")
    rebooted = _client(setup["url"], tmp_path / "e", setup["pub"], setup["probe"])
    rebooted.recover()
    assert _assert_working(rebooted, {"1.0.0"}) == "1.0.0"


def test_revert_needs_the_version_in_the_previous_slot(setup: dict[str, Any],
                                                       tmp_path: Path) -> None:
    shutil.copytree(setup["golden"], tmp_path / "d")
    client = _client(setup["url"], tmp_path / "d", setup["pub"], setup["probe"])
    client.recover()
    assert client._revert("0.8.0")[0] == "revert_unavailable"
    client.poll_once()
    assert client._revert("1.0.0")[0] == "reverted"
    assert _assert_working(client, {"1.0.0"}) == "1.0.0"
