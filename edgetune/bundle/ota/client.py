"""The device client: poll, download (resuming, by delta when it can), verify, install A/B,
health-check, revert on failure, and report on-device metrics.

One :meth:`DeviceClient.poll_once` is one round: ask the server what to do, do it, report.
Nothing the server says is trusted by itself: every bundle is verified against the device's own
public keys, must be newer than the running one (no rollback by download), must fit the
device's tier and runtime, and must pass the health check in its slot before it is kept. The
only step back a server can order is to the previous slot, which the device verified itself.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from edgetune.bundle.errors import BundleError, Reason
from edgetune.bundle.manifest import check_slug, parse_version
from edgetune.bundle.ota.errors import OtaError, Unavailable
from edgetune.bundle.ota.health import ProbeData, ProbeResult, open_session, probe_model
from edgetune.bundle.ota.http import Http
from edgetune.bundle.ota.slots import Slots, describe
from edgetune.bundle.pack import VerifiedBundle, VerifyConfig, file_sha256, verify_bundle
from edgetune.bundle.sign import VerifyKey, load_public_key
from edgetune.errors import ConfigError

__all__ = ["ClientConfig", "DeviceClient"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    server: str
    device_id: str
    dir: Path
    keys: tuple[Path, ...] = ()
    """Trusted public keys; bundles signed by anything else are refused."""
    tier: str = "any"
    poll_interval_s: float = 30.0
    timeout_s: float = 30.0
    use_delta: bool = True

    def validate(self) -> ClientConfig:
        check_slug(self.device_id, "device id")
        check_slug(self.tier, "tier")
        if self.poll_interval_s <= 0 or self.timeout_s <= 0:
            raise ConfigError("poll_interval_s and timeout_s must be > 0")
        return self


def _runtime_versions() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


class DeviceClient:
    def __init__(self, config: ClientConfig, *, keys: Sequence[VerifyKey] | None = None,
                 probe: ProbeData | None = None, step: Callable[[str], None] | None = None
                 ) -> None:
        self.config = config.validate()
        self.dir = Path(config.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keys = tuple(keys) if keys is not None else tuple(
            load_public_key(k) for k in config.keys)
        if not self.keys:
            raise ConfigError("a device needs at least one trusted public key; pass --key "
                              "NAME.pub")
        self.probe = probe
        self.step = step or (lambda _: None)
        self.slots = Slots(self.dir, self.keys, self.step)
        self.http = Http(config.server, self._token(), config.timeout_s)
        self.rejected: dict[str, str] = {}
        self._told: set[tuple[str, str]] = set()
        self.counters: dict[str, int] = {}
        """What this device did: installed, reverted, rejected, health_failed, delta, full,
        resumed (downloads continued from a partial file)."""
        self._sessions: dict[str, Any] = {}

    # -- identity --------------------------------------------------------------------------

    def _token(self) -> str | None:
        path = self.dir / "credentials.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("device_id") != self.config.device_id:
            raise ConfigError(f"{str(path)!r} belongs to device {data.get('device_id')!r}, not "
                              f"{self.config.device_id!r}; give each device its own --dir")
        return str(data["token"])

    @property
    def enrolled(self) -> bool:
        return self.http.token is not None

    def enroll(self, code: str) -> None:
        """Trade the one-time code for this device's token, kept owner-only in its folder."""
        answer = self.http.json("POST", "/v1/enroll",
                                {"device_id": self.config.device_id, "code": code})
        path, tmp = self.dir / "credentials.json", self.dir / ".credentials.json.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"device_id": self.config.device_id, "token": answer["token"]}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self.http.token = answer["token"]

    # -- local model -----------------------------------------------------------------------

    def recover(self) -> dict[str, Any]:
        """Run at start: leaves the device on a verified, healthy model if it has one."""
        return describe(self.slots.recover(self._health))

    def bootstrap(self, bundle: Path) -> None:
        """Factory install of a local bundle when the device has no model yet."""
        if self.slots.state.active is not None:
            return
        verified = verify_bundle(bundle, self._verify_config(), keys=self.keys)
        self._place(bundle, verified)

    def active(self) -> dict[str, Any]:
        return describe(self.slots.state)

    def _session(self, slot: str) -> Any:
        sha = self.slots.state.slots[slot].sha256
        if sha not in self._sessions:
            self._sessions = {sha: open_session(self.slots.model_dir(slot),
                                                self.slots.manifest(slot))}
        return self._sessions[sha]

    def _probe(self, slot: str) -> ProbeResult:
        try:
            session = self._session(slot)
        except Exception as exc:  # a model that does not load fails its health check
            return ProbeResult(ok=False, reason=f"model does not load: {str(exc)[:200]}")
        return probe_model(session, self.slots.manifest(slot), self.probe)

    def check(self) -> tuple[bool, str]:
        """Is the active model verified and healthy? (for a supervisor, or a test)"""
        active = self.slots.state.active
        if active is None:
            return False, "no model installed"
        try:
            self.slots.manifest(active)
        except BundleError as exc:
            return False, str(exc)
        return self._health(active)

    def _health(self, slot: str) -> tuple[bool, str]:
        result = self._probe(slot)
        return result.ok, result.reason

    # -- one round -------------------------------------------------------------------------

    def poll_once(self) -> str:
        """Ask, act, report. Returns what happened: none, installed, reverted, rejected,
        health_failed, revert_unavailable, or retry (network trouble; resumes next time)."""
        current = self.slots.state.current
        query = urlencode({"version": current.version, "sha256": current.sha256}
                          if current else {})
        try:
            desired = self.http.json("GET", f"/v1/device/desired?{query}")
            if not isinstance(desired, dict) or "action" not in desired:
                raise Unavailable(f"unexpected answer from the server: {str(desired)[:80]}")
            outcome, reason = self._act(desired)
            if outcome != "none":
                self._count(outcome)
            self._report(desired.get("report"), outcome, reason)
        except Unavailable as exc:
            log.info("%s: %s", self.config.device_id, exc)
            return "retry"
        return outcome

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _act(self, desired: dict[str, Any]) -> tuple[str, str]:
        if desired["action"] == "install":
            return self._install(desired["release"])
        if desired["action"] == "revert":
            return self._revert(desired["version"])
        return "none", ""

    def _report(self, tag: dict[str, Any] | None, outcome: str, reason: str) -> None:
        if tag is None and (outcome in ("none", "installed") or (outcome, reason) in self._told):
            return
        self._told.add((outcome, reason))
        body: dict[str, Any] = {"device_id": self.config.device_id, **(tag or {})}
        current = self.slots.state.current
        if current is not None:
            body.update(version=current.version, sha256=current.sha256)
        if outcome in ("none", "installed"):
            result = self._probe(self.slots.state.active) if self.slots.state.active else None
            if result is None or not result.ok:
                body.update(status="health_failed", reason=result.reason if result else
                            "no model installed")
            else:
                body.update(status="ok", metrics=result.metrics())
        else:
            body.update(status=outcome, reason=reason[:500])
        self.http.json("POST", "/v1/device/reports", body)

    def _revert(self, version: str) -> tuple[str, str]:
        current = self.slots.state.current
        if current is not None and current.version == version:
            return "none", ""
        if not self.slots.switch_to_previous(version):
            return "revert_unavailable", f"no intact previous slot holds version {version}"
        ok, reason = self._health(self.slots.state.active or "")
        if not ok:
            self.slots.undo()
            return "revert_unavailable", f"previous version failed its health check: {reason}"
        self.slots.commit()
        log.info("%s: reverted to %s", self.config.device_id, version)
        return "reverted", f"rolled back to {version} as the server ordered"

    def _install(self, offer: dict[str, Any]) -> tuple[str, str]:
        sha = offer["sha256"]
        if sha in self.rejected:
            return "rejected", self.rejected[sha]
        path = self._fetch(offer)
        try:
            verified = self._verify(path, sha)
        except BundleError as exc:
            self.rejected[sha] = str(exc)
            path.unlink(missing_ok=True)
            log.warning("%s refused %s: %s", self.config.device_id, offer["version"], exc)
            return "rejected", str(exc)
        return self._place(path, verified)

    def _verify(self, path: Path, sha: str) -> VerifiedBundle:
        verified = verify_bundle(path, self._verify_config(), keys=self.keys)
        current = self.slots.state.current
        if current and parse_version(verified.manifest.version) <= parse_version(current.version):
            raise BundleError(Reason.ROLLBACK, f"bundle version {verified.manifest.version} is "
                              f"not newer than the installed {current.version}")
        if verified.sha256 != sha:
            raise BundleError(Reason.TAMPERED, "bundle differs from the one the server announced")
        return verified

    def _verify_config(self) -> VerifyConfig:
        current = self.slots.state.current
        return VerifyConfig(min_version=current.version if current else None,
                            tier=self.config.tier, runtime_versions=_runtime_versions())

    def _place(self, path: Path, verified: VerifiedBundle) -> tuple[str, str]:
        slot = self.slots.install(path, verified)
        ok, reason = self._health(slot)
        self.step("install:checked")
        if not ok:
            self.slots.undo()
            self.rejected[verified.sha256] = reason
            return "health_failed", reason
        self.slots.commit()
        self._clean_downloads()
        return "installed", ""

    # -- downloads -------------------------------------------------------------------------

    def _downloads(self) -> Path:
        folder = self.dir / "downloads"
        folder.mkdir(exist_ok=True)
        return folder

    def _clean_downloads(self) -> None:
        for leftover in self._downloads().iterdir():
            leftover.unlink(missing_ok=True)

    def _fetch(self, offer: dict[str, Any]) -> Path:
        """The announced bundle on disk: by delta from the active bundle when offered, else in
        full; both resume after an interruption."""
        final = self._downloads() / f"{offer['sha256']}.etb"
        if final.exists():
            return final
        delta = offer.get("delta")
        current = self.slots.state.current
        if (self.config.use_delta and delta and current
                and current.sha256 == delta["base_sha256"] and self._patched(delta, final)):
            self._count("delta")
            return final
        part = self._downloads() / f"{offer['sha256']}.part"
        if part.exists() and part.stat().st_size > 0:
            self._count("resumed")
        self.http.download(offer["url"], part, int(offer["size"]), self._chunk_step)
        os.replace(part, final)
        self._count("full")
        return final

    def _patched(self, delta: dict[str, Any], final: Path) -> bool:
        from edgetune.bundle.delta import patch_bundle

        part = self._downloads() / f"{delta['sha256']}.etd"
        self.http.download(delta["url"], part, int(delta["size"]), self._chunk_step)
        try:
            if file_sha256(part) != delta["sha256"]:
                raise BundleError(Reason.TAMPERED, "delta differs from the one announced")
            active = self.slots.state.active or ""
            patch_bundle(self.slots.bundle_path(active), part, output=final, keys=self.keys,
                         config=self._verify_config())
        except BundleError as exc:
            log.warning("%s: delta unusable (%s); downloading in full", self.config.device_id,
                        exc)
            return False
        finally:
            part.unlink(missing_ok=True)
        return True

    def _chunk_step(self, _: int) -> None:
        self.step("download:chunk")

    # -- loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, max_polls: int | None = None) -> None:
        """Poll until ``stop`` is set (or ``max_polls`` rounds), sleeping with jitter."""
        stop = stop or threading.Event()
        polls = 0
        while not stop.is_set() and (max_polls is None or polls < max_polls):
            try:
                self.poll_once()
            except OtaError as exc:
                log.warning("%s: %s", self.config.device_id, exc)
            polls += 1
            stop.wait(self.config.poll_interval_s * random.uniform(0.8, 1.2))
