"""A/B model slots on the device: install beside the running model, switch atomically, revert.

Layout under the device folder::

    state.json              which slot is active, which is the previous one, whether the
                            active one still awaits its health check (``pending``)
    slots/a/bundle.etb      the verified bundle as received (the base for the next delta)
    slots/a/model/          its files, unpacked and re-hashed, plus the signed manifest
    slots/b/...             the other slot

The state file is the only switch: it is replaced atomically (write, fsync, rename, fsync the
folder), and it never names a slot that is being written. So a power cut at any moment leaves
either the old state (the running model untouched) or the new one (a complete, verified slot,
which is health-checked on the next start because it is still ``pending``). On start,
:meth:`Slots.recover` removes half-written folders, re-verifies the active slot against its
signature and hashes, falls back to the previous slot if that fails, and finishes or undoes a
pending switch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgetune.bundle.errors import BundleError
from edgetune.bundle.manifest import Manifest, parse_version
from edgetune.bundle.pack import VerifiedBundle, VerifyConfig, unpack_bundle, verify_dir
from edgetune.bundle.sign import VerifyKey

__all__ = ["DeviceState", "SlotInfo", "Slots"]

log = logging.getLogger(__name__)
SCHEMA = "edgetune.ota.device/1"
SLOTS = ("a", "b")
Health = Callable[[str], tuple[bool, str]]


@dataclass(frozen=True, kw_only=True)
class SlotInfo:
    version: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class DeviceState:
    active: str | None = None
    previous: str | None = None
    pending: bool = False
    slots: dict[str, SlotInfo] = field(default_factory=dict)

    @property
    def current(self) -> SlotInfo | None:
        return self.slots.get(self.active) if self.active else None

    def to_json(self) -> str:
        slots = {k: {"version": v.version, "sha256": v.sha256} for k, v in self.slots.items()}
        return json.dumps({"schema": SCHEMA, "active": self.active, "previous": self.previous,
                           "pending": self.pending, "slots": slots}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeviceState:
        raw = json.loads(text)
        if raw.get("schema") != SCHEMA:
            raise ValueError(f"unknown device state schema {raw.get('schema')!r}")
        slots = {k: SlotInfo(version=str(v["version"]), sha256=str(v["sha256"]))
                 for k, v in raw["slots"].items() if k in SLOTS}
        active = raw["active"] if raw["active"] in slots else None
        previous = raw["previous"] if raw["previous"] in slots else None
        return cls(active=active, previous=previous, pending=bool(raw["pending"]), slots=slots)


def _noop(_: str) -> None:
    return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Slots:
    """The device's two slots and the state file that chooses between them."""

    def __init__(self, root: Path, keys: Sequence[VerifyKey],
                 step: Callable[[str], None] = _noop) -> None:
        self.root, self.keys, self.step = Path(root), tuple(keys), step
        (self.root / "slots").mkdir(parents=True, exist_ok=True)
        self.state = self._load()
        self._manifests: dict[str, Manifest] = {}

    # -- paths and reading -----------------------------------------------------------------

    def folder(self, slot: str) -> Path:
        return self.root / "slots" / slot

    def model_dir(self, slot: str) -> Path:
        return self.folder(slot) / "model"

    def bundle_path(self, slot: str) -> Path:
        return self.folder(slot) / "bundle.etb"

    def manifest(self, slot: str) -> Manifest:
        """The slot's manifest, re-verified (signature and hashes) once per process."""
        sha = self.state.slots[slot].sha256
        if sha not in self._manifests:
            self._manifests[sha] = verify_dir(self.model_dir(slot), keys=self.keys)
        return self._manifests[sha]

    def _load(self) -> DeviceState:
        path = self.root / "state.json"
        if not path.exists():
            return self._rebuild()
        try:
            return DeviceState.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("device state unreadable (%s); rebuilding it from the slots", exc)
            return self._rebuild()

    def _rebuild(self) -> DeviceState:
        """The best intact slot becomes active (used only if the state file is lost)."""
        found: dict[str, SlotInfo] = {}
        if not any(self.folder(slot).exists() for slot in SLOTS):
            return DeviceState()
        for slot in SLOTS:
            manifest = self._intact_manifest(slot)
            if manifest is not None:
                from edgetune.bundle.pack import file_sha256

                found[slot] = SlotInfo(version=manifest.version,
                                       sha256=file_sha256(self.bundle_path(slot)))
        if not found:
            return DeviceState()
        best = max(found, key=lambda s: parse_version(found[s].version))
        return DeviceState(active=best, slots=found, pending=True)

    def _intact_manifest(self, slot: str) -> Manifest | None:
        try:
            return verify_dir(self.model_dir(slot), keys=self.keys)
        except (BundleError, OSError) as exc:
            log.warning("slot %s is not intact: %s", slot, exc)
            return None

    def _save(self, state: DeviceState, label: str) -> None:
        """Replace the state file atomically and durably."""
        path, tmp = self.root / "state.json", self.root / ".state.json.tmp"
        with tmp.open("w", encoding="utf-8") as out:
            out.write(state.to_json())
            out.flush()
            os.fsync(out.fileno())
        self.step(f"state:{label}:written")
        os.replace(tmp, path)
        fsync_dir(self.root)
        self.state = state
        self.step(f"state:{label}:renamed")

    def _remove(self, slot: str) -> None:
        folder = self.folder(slot)
        if folder.exists():
            trash = folder.with_name(f".trash-{slot}")
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(folder, trash)
            fsync_dir(folder.parent)
            self.step("slot:moved-to-trash")
            shutil.rmtree(trash, ignore_errors=True)

    # -- changes ---------------------------------------------------------------------------

    def install(self, bundle: Path, verified: VerifiedBundle) -> str:
        """Put a verified bundle in the inactive slot and switch to it (pending health)."""
        state = self.state
        target = "b" if state.active == "a" else "a"
        self.step("install:start")
        if target in state.slots:
            slots = {k: v for k, v in state.slots.items() if k != target}
            previous = None if state.previous == target else state.previous
            self._save(replace(state, slots=slots, previous=previous), "forget")
        self._remove(target)
        tmp = self.root / "slots" / f".{target}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _copy_durably(bundle, tmp / "bundle.etb")
        self.step("install:copied")
        unpack_bundle(tmp / "bundle.etb", tmp / "model", VerifyConfig(), keys=self.keys)
        self.step("install:unpacked")
        os.rename(tmp, self.folder(target))
        fsync_dir(self.root / "slots")
        self.step("install:placed")
        info = SlotInfo(version=verified.manifest.version, sha256=verified.sha256)
        slots = {**{k: v for k, v in self.state.slots.items() if k != target}, target: info}
        self._save(DeviceState(active=target, previous=self.state.active, pending=True,
                               slots=slots), "switch")
        return target

    def commit(self) -> None:
        self._save(replace(self.state, pending=False), "commit")

    def undo(self) -> None:
        """The active slot failed: go back to the previous one and forget the failed one."""
        state = self.state
        failed = state.active
        slots = {k: v for k, v in state.slots.items() if k != failed}
        self._save(DeviceState(active=state.previous, previous=None, pending=False, slots=slots),
                   "undo")

    def switch_to_previous(self, version: str) -> bool:
        """Go back to the previous slot if it holds ``version`` intact (a commanded rollback)."""
        state = self.state
        prev = state.previous
        if prev is None or state.slots[prev].version != version:
            return False
        if self._intact_manifest(prev) is None:
            return False
        self._save(DeviceState(active=prev, previous=state.active, pending=True,
                               slots=state.slots), "revert")
        return True

    def recover(self, health: Health) -> DeviceState:
        """After a start or a power cut: clean up, re-verify, finish or undo a pending switch."""
        for leftover in (self.root / "slots").glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True)
        (self.root / ".state.json.tmp").unlink(missing_ok=True)
        state = self.state
        if state.active and self._intact_manifest(state.active) is None:
            self._fall_back()
        if self.state.pending and self.state.active:
            ok, reason = health(self.state.active)
            if ok:
                self.commit()
            else:
                log.warning("health check failed after restart (%s); reverting", reason)
                self.undo()
        return self.state

    def _fall_back(self) -> None:
        state = self.state
        prev = state.previous
        if prev is not None and self._intact_manifest(prev) is not None:
            self._save(DeviceState(active=prev, pending=False, slots={prev: state.slots[prev]}),
                       "fallback")
        else:
            self._save(DeviceState(), "empty")


def _copy_durably(source: Path, dest: Path) -> None:
    with source.open("rb") as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def describe(state: DeviceState) -> dict[str, Any]:
    current = state.current
    return {"active": state.active, "version": current.version if current else None,
            "sha256": current.sha256 if current else None, "pending": state.pending}
