"""The rollout server's logic, without HTTP: devices, releases, rollouts and their decisions.

Every method is one read or one write transaction on the database, so the HTTP layer stays thin
and a crash at any point leaves a consistent state to resume from. The rollout advances in
:meth:`Fleet.evaluate`, called periodically by the server: it re-reads everything it needs, so
a restarted server simply carries on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgetune.bundle.errors import BundleError
from edgetune.bundle.manifest import check_slug, parse_version
from edgetune.bundle.ota import auth
from edgetune.bundle.ota.db import Database
from edgetune.bundle.ota.errors import Conflict, Forbidden, NotFound, OtaError
from edgetune.bundle.ota.rollout import (
    Action,
    Decision,
    DeviceReport,
    GroupStats,
    RolloutPolicy,
    decide,
    parse_stages,
    plan_stage,
)
from edgetune.bundle.ota.store import BlobStore
from edgetune.bundle.sign import VerifyKey

__all__ = ["Fleet"]

log = logging.getLogger(__name__)
_SEEN_EVERY_S = 15.0


class Fleet:
    def __init__(self, db: Database, store: BlobStore, keys: Sequence[VerifyKey] = ()) -> None:
        self.db, self.store, self.keys = db, store, tuple(keys)
        self.t = db.t
        self.sa = db.sa

    # -- devices ---------------------------------------------------------------------------

    def register(self, ids: Sequence[str], tier: str = "any") -> dict[str, str]:
        """Register devices; returns each one's one-time enrollment code."""
        check_slug(tier, "tier")
        for device_id in ids:
            check_slug(device_id, "device id")
        codes = {d: auth.new_secret("enr") for d in ids}
        now = time.time()
        with self.db.write() as conn:
            known = self._existing(conn, ids)
            if known:
                raise Conflict(f"device {known[0]!r} is already registered; give a new id")
            conn.execute(self.t["devices"].insert(), [
                {"id": d, "tier": tier, "enroll_hash": auth.digest(c), "registered_at": now}
                for d, c in codes.items()])
        return codes

    def _existing(self, conn: Any, ids: Sequence[str]) -> list[str]:
        d = self.t["devices"]
        rows = conn.execute(self.sa.select(d.c.id).where(d.c.id.in_(list(ids)))).all()
        return [r.id for r in rows]

    def enroll(self, device_id: str, code: str) -> str:
        """Trade a one-time code for the device's own token; a second enrollment is refused."""
        d = self.t["devices"]
        token = auth.new_secret("dev")
        with self.db.write() as conn:
            row = conn.execute(self.sa.select(d).where(d.c.id == device_id)).first()
            if row is not None and row.token_hash is not None:
                raise Conflict(f"device {device_id!r} is already enrolled; a device enrolls "
                               "once, ask the operator to re-register it")
            if row is None or not auth.matches(code, row.enroll_hash):
                raise Forbidden("unknown device or wrong enrollment code; use the code the "
                                "operator got from: edgetune ota register")
            conn.execute(d.update().where(d.c.id == device_id).values(
                token_hash=auth.digest(token), enroll_hash=None, enrolled_at=time.time()))
        return token

    def device_by_token(self, token: str) -> Any:
        d = self.t["devices"]
        with self.db.read() as conn:
            return conn.execute(self.sa.select(d).where(
                d.c.token_hash == auth.digest(token))).first()

    # -- releases --------------------------------------------------------------------------

    def add_release(self, upload: Path) -> dict[str, Any]:
        """Check an uploaded bundle, store it, and prepare a delta from the fleet's version."""
        try:
            manifest = self._check_bundle(upload)
            with self.db.read() as conn:
                self._check_new_version(conn, manifest.version)
                base = self._baseline(conn)
            sha, size = self.store.adopt(upload, "etb")
        finally:
            upload.unlink(missing_ok=True)
        delta = self._delta(base, sha) if base is not None else None
        row = {"version": manifest.version, "sha256": sha, "size": size, "tier": manifest.tier,
               "manifest": json.dumps(manifest.to_statement()), "created_at": time.time(),
               **(delta or {})}
        with self.db.write() as conn:
            self._check_new_version(conn, manifest.version)
            new_id = conn.execute(self.t["releases"].insert().values(**row)).inserted_primary_key[0]
        log.info("release %s stored as %s (%d bytes)", manifest.version, sha[:12], size)
        return self.release(int(new_id))

    def _check_bundle(self, path: Path) -> Any:
        from edgetune.bundle.archive import Limits
        from edgetune.bundle.pack import VerifyConfig, check_policy, scan, verify_bundle
        from edgetune.bundle.sign import parse_envelope

        try:
            if self.keys:
                return verify_bundle(path, keys=self.keys).manifest
            _, manifest, _ = scan(path, lambda env: parse_envelope(env).payload, Limits(),
                                  lambda m: check_policy(m, VerifyConfig()))
            return manifest
        except BundleError as exc:
            raise OtaError(f"release refused: {exc}") from None

    def _check_new_version(self, conn: Any, version: str) -> None:
        r = self.t["releases"]
        if conn.execute(self.sa.select(r.c.id).where(r.c.version == version)).first():
            raise Conflict(f"release {version} already exists; bump the bundle's version")
        base = self._baseline(conn)
        if base is not None and parse_version(version) <= parse_version(base.version):
            raise Conflict(f"release {version} is not newer than the fleet's version "
                           f"{base.version}; bump the bundle's version")

    def _delta(self, base: Any, sha: str) -> dict[str, Any] | None:
        from edgetune.bundle.delta import diff_bundles

        tmp = self.store.temp_path()
        try:
            diff_bundles(self.store.path(base.sha256, "etb"), self.store.path(sha, "etb"),
                         output=tmp)
            if tmp.stat().st_size >= 0.9 * self.store.path(sha, "etb").stat().st_size:
                log.info("no delta from release %s: barely smaller than the bundle",
                         base.version)
                tmp.unlink(missing_ok=True)
                return None
            delta_sha, delta_size = self.store.adopt(tmp, "etd")
        except (BundleError, OSError) as exc:
            log.warning("no delta from release %s: %s", base.version, exc)
            tmp.unlink(missing_ok=True)
            return None
        return {"delta_base_id": base.id, "delta_sha256": delta_sha, "delta_size": delta_size}

    def release(self, release_id: int) -> dict[str, Any]:
        with self.db.read() as conn:
            row = self._release(conn, release_id)
        return _release_dict(row)

    def _release(self, conn: Any, release_id: int | None) -> Any:
        r = self.t["releases"]
        row = conn.execute(self.sa.select(r).where(r.c.id == release_id)).first()
        if row is None:
            raise NotFound(f"release {release_id} does not exist; list them with: "
                           "edgetune ota status")
        return row

    def releases(self) -> list[dict[str, Any]]:
        r = self.t["releases"]
        with self.db.read() as conn:
            return [_release_dict(row) for row in conn.execute(self.sa.select(r).order_by(r.c.id))]

    def blob_path(self, release_id: int, kind: str) -> Path:
        """The stored file of a release (``etb``) or of its delta (``etd``)."""
        with self.db.read() as conn:
            row = self._release(conn, release_id)
        digest = row.sha256 if kind == "etb" else row.delta_sha256
        if digest is None:
            raise NotFound(f"release {release_id} has no delta")
        path = self.store.path(digest, kind)
        if not path.is_file():
            raise NotFound(f"release {release_id}'s file is missing from the store")
        return path

    # -- rollouts --------------------------------------------------------------------------

    def _baseline(self, conn: Any) -> Any:
        """The release of the last completed rollout: what the fleet runs."""
        ro, r = self.t["rollouts"], self.t["releases"]
        query = (self.sa.select(r).join(ro, ro.c.release_id == r.c.id)
                 .where(ro.c.state == "complete").order_by(ro.c.id.desc()).limit(1))
        return conn.execute(query).first()

    def _rollout(self, conn: Any, rollout_id: int | None = None, state: str | None = None) -> Any:
        ro = self.t["rollouts"]
        query = self.sa.select(ro).order_by(ro.c.id.desc()).limit(1)
        if rollout_id is not None:
            query = query.where(ro.c.id == rollout_id)
        if state is not None:
            query = query.where(ro.c.state == state)
        return conn.execute(query).first()

    def start_rollout(self, release_id: int, stages: str | Sequence[int],
                      policy: RolloutPolicy | None = None) -> dict[str, Any]:
        plan = parse_stages(stages)
        policy = (policy or RolloutPolicy()).validate()
        now = time.time()
        with self.db.write() as conn:
            release = self._release(conn, release_id)
            if self._rollout(conn, state="running") is not None:
                raise Conflict("a rollout is already running; wait for it or halt it first")
            base = self._baseline(conn)
            if base is not None and parse_version(release.version) <= parse_version(base.version):
                raise Conflict(f"release {release.version} is not newer than the fleet's "
                               f"version {base.version}")
            devices = self._eligible(conn, release.tier)
            if not devices:
                raise Conflict("no enrolled device can take this release; enroll devices first")
            rid = conn.execute(self.t["rollouts"].insert().values(
                release_id=release.id, base_release_id=base.id if base is not None else None,
                stages=json.dumps(plan), stage=0, state="running", policy=json.dumps(
                    policy.to_dict()), created_at=now, stage_started_at=now, updated_at=now,
            )).inserted_primary_key[0]
            self._add_members(conn, int(rid), 0, plan[0], devices, policy)
        log.info("rollout %s of release %s started: stages %s", rid, release.version, plan)
        return self.rollout_status(int(rid))

    def _eligible(self, conn: Any, tier: str) -> list[str]:
        d = self.t["devices"]
        query = self.sa.select(d.c.id).where(d.c.token_hash.is_not(None))
        if tier != "any":
            query = query.where(d.c.tier.in_([tier, "any"]))
        return [row.id for row in conn.execute(query)]

    def _add_members(self, conn: Any, rid: int, stage: int, percent: int, devices: list[str],
                     policy: RolloutPolicy) -> None:
        m = self.t["members"]
        earlier = {row.device_id for row in conn.execute(self.sa.select(m.c.device_id).where(
            (m.c.rollout_id == rid) & (m.c.role == "canary")))}
        canaries, controls = plan_stage(rid, devices, percent, policy)
        canary_set = set(canaries) | earlier
        rows = [{"rollout_id": rid, "stage": stage, "device_id": d, "role": "canary"}
                for d in sorted(canary_set)]
        rows += [{"rollout_id": rid, "stage": stage, "device_id": d, "role": "control"}
                 for d in controls if d not in canary_set]
        conn.execute(m.insert(), rows)

    def halt(self, rollout_id: int, reason: str) -> dict[str, Any]:
        ro = self.t["rollouts"]
        with self.db.write() as conn:
            row = self._rollout(conn, rollout_id)
            if row is None:
                raise NotFound(f"rollout {rollout_id} does not exist")
            if row.state != "running":
                raise Conflict(f"rollout {rollout_id} is {row.state}, not running")
            conn.execute(ro.update().where(ro.c.id == rollout_id).values(
                state="halted", reason=f"halted by operator: {reason}", updated_at=time.time()))
        return self.rollout_status(rollout_id)

    def evaluate(self, now: float | None = None) -> Decision | None:
        """Decide the running rollout's current stage; advance or halt it if it is time."""
        now = time.time() if now is None else now
        with self.db.read() as conn:
            row = self._rollout(conn, state="running")
            if row is None:
                return None
            release = self._release(conn, row.release_id)
            canaries, controls = self._members(conn, row.id, row.stage)
            reports = self._stage_reports(conn, row.id, row.stage)
            reference = self._reference(conn, row.id) if not controls else None
        policy = RolloutPolicy.from_dict(json.loads(row.policy))
        decision = decide(policy, version=release.version, canaries=canaries, controls=controls,
                          reports=reports, age_s=now - row.stage_started_at, reference=reference)
        if decision.action is not Action.WAIT:
            self._apply(row, decision, policy, now)
        return decision

    def _members(self, conn: Any, rid: int, stage: int) -> tuple[list[str], list[str]]:
        m = self.t["members"]
        rows = conn.execute(self.sa.select(m.c.device_id, m.c.role).where(
            (m.c.rollout_id == rid) & (m.c.stage == stage))).all()
        return ([r.device_id for r in rows if r.role == "canary"],
                [r.device_id for r in rows if r.role == "control"])

    def _stage_reports(self, conn: Any, rid: int, stage: int) -> dict[str, DeviceReport]:
        rp = self.t["reports"]
        rows = conn.execute(self.sa.select(rp).where(
            (rp.c.rollout_id == rid) & (rp.c.stage == stage)).order_by(rp.c.id)).all()
        return {row.device_id: _device_report(row) for row in rows}

    def _reference(self, conn: Any, rid: int) -> GroupStats | None:
        sr = self.t["stage_results"]
        rows = conn.execute(self.sa.select(sr).where(sr.c.rollout_id == rid)
                            .order_by(sr.c.stage.desc())).all()
        for row in rows:
            control = json.loads(row.decision).get("control")
            if control:
                return GroupStats.from_dict(control)
        return None

    def _apply(self, row: Any, decision: Decision, policy: RolloutPolicy, now: float) -> None:
        ro = self.t["rollouts"]
        stages = json.loads(row.stages)
        with self.db.write() as conn:
            current = self._rollout(conn, row.id)
            if current.state != "running" or current.stage != row.stage:
                return
            conn.execute(self.t["stage_results"].insert().values(
                rollout_id=row.id, stage=row.stage, decision=json.dumps(decision.to_dict()),
                decided_at=now))
            values: dict[str, Any] = {"updated_at": now}
            if decision.action is Action.HALT:
                values.update(state="halted", reason=decision.reason)
            elif row.stage + 1 == len(stages):
                values.update(state="complete", reason=decision.reason)
            else:
                values.update(stage=row.stage + 1, stage_started_at=now)
                release = self._release(conn, row.release_id)
                self._add_members(conn, row.id, row.stage + 1, stages[row.stage + 1],
                                  self._eligible(conn, release.tier), policy)
            conn.execute(ro.update().where(ro.c.id == row.id).values(**values))
        log.info("rollout %s stage %s: %s (%s)", row.id, row.stage, decision.action.value,
                 decision.reason)

    def rollout_status(self, rollout_id: int | None = None) -> dict[str, Any]:
        sr = self.t["stage_results"]
        with self.db.read() as conn:
            row = self._rollout(conn, rollout_id)
            if row is None:
                raise NotFound("no such rollout; start one with: edgetune ota release")
            release = self._release(conn, row.release_id)
            results = conn.execute(self.sa.select(sr).where(sr.c.rollout_id == row.id)
                                   .order_by(sr.c.stage)).all()
            canaries, controls = self._members(conn, row.id, row.stage)
        return {
            "id": row.id, "release_id": row.release_id, "version": release.version,
            "base_release_id": row.base_release_id, "stages": json.loads(row.stages),
            "stage": row.stage, "state": row.state, "reason": row.reason,
            "canaries": len(canaries), "controls": len(controls),
            "decisions": [{"stage": r.stage, **json.loads(r.decision)} for r in results],
        }

    # -- the device's view ------------------------------------------------------------------

    def desired(self, device: Any, version: str | None, sha: str | None) -> dict[str, Any]:
        """What a device should do now: install a release, revert, or nothing."""
        self._seen(device, version, sha)
        with self.db.read() as conn:
            running = self._rollout(conn, state="running")
            base = self._baseline(conn)
            target, report = base, None
            if running is not None:
                role = self._role(conn, running, device.id)
                if role == "canary":
                    target = self._release(conn, running.release_id)
                if role and not self._reported(conn, device.id, running.id, running.stage):
                    report = {"rollout_id": running.id, "stage": running.stage}
            if version and self._is_halted(conn, version) and base is not None \
                    and (target is None or target.version != version):
                # no stage report with a revert: it would count against the running rollout
                return {"action": "revert", "version": base.version, "report": None}
            if target is None or target.sha256 == sha or _newer(version, target.version):
                return {"action": "none", "report": report}
            delta = self._delta_for(conn, target, sha)
        return {"action": "install", "release": _offer(target, delta), "report": report}

    def _seen(self, device: Any, version: str | None, sha: str | None) -> None:
        now = time.time()
        stale = device.last_seen is None or now - device.last_seen > _SEEN_EVERY_S
        if stale or device.version != version or device.sha256 != sha:
            d = self.t["devices"]
            with self.db.write() as conn:
                conn.execute(d.update().where(d.c.id == device.id).values(
                    last_seen=now, version=version, sha256=sha))

    def _role(self, conn: Any, rollout: Any, device_id: str) -> str | None:
        m = self.t["members"]
        return conn.execute(self.sa.select(m.c.role).where(
            (m.c.rollout_id == rollout.id) & (m.c.stage == rollout.stage)
            & (m.c.device_id == device_id))).scalar()

    def _reported(self, conn: Any, device_id: str, rid: int, stage: int) -> bool:
        rp = self.t["reports"]
        return conn.execute(self.sa.select(rp.c.id).where(
            (rp.c.device_id == device_id) & (rp.c.rollout_id == rid)
            & (rp.c.stage == stage)).limit(1)).first() is not None

    def _is_halted(self, conn: Any, version: str) -> bool:
        ro, r = self.t["rollouts"], self.t["releases"]
        query = (self.sa.select(ro.c.id).join(r, ro.c.release_id == r.c.id)
                 .where((ro.c.state == "halted") & (r.c.version == version)).limit(1))
        return conn.execute(query).first() is not None

    def _delta_for(self, conn: Any, target: Any, sha: str | None) -> Any:
        if target.delta_base_id is None or sha is None:
            return None
        base = self._release(conn, target.delta_base_id)
        return base if base.sha256 == sha else None

    def report(self, device: Any, body: dict[str, Any]) -> None:
        """Store a device's report; a device reports for itself only."""
        claimed = body.get("device_id")
        if claimed is not None and claimed != device.id:
            raise Forbidden(f"device {device.id!r} cannot report as {claimed!r}")
        with self.db.write() as conn:
            if body.get("rollout_id") is not None and \
                    self._rollout(conn, body["rollout_id"]) is None:
                raise NotFound(f"rollout {body['rollout_id']} does not exist")
            conn.execute(self.t["reports"].insert().values(
                device_id=device.id, rollout_id=body.get("rollout_id"), stage=body.get("stage"),
                version=body.get("version"), status=body["status"], reason=body.get("reason"),
                metrics=json.dumps(body.get("metrics") or {}), created_at=time.time()))

    def reports_of(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        rp = self.t["reports"]
        with self.db.read() as conn:
            rows = conn.execute(self.sa.select(rp).where(rp.c.device_id == device_id)
                                .order_by(rp.c.id.desc()).limit(limit)).all()
        return [{"rollout_id": r.rollout_id, "stage": r.stage, "version": r.version,
                 "status": r.status, "reason": r.reason, "metrics": json.loads(r.metrics or "{}"),
                 "created_at": r.created_at} for r in rows]

    def summary(self) -> dict[str, Any]:
        d = self.t["devices"]
        with self.db.read() as conn:
            rows = conn.execute(self.sa.select(d.c.version, d.c.token_hash)).all()
            base = self._baseline(conn)
            latest = self._rollout(conn)
        versions: dict[str, int] = {}
        for row in rows:
            if row.token_hash is not None:
                versions[row.version or "none"] = versions.get(row.version or "none", 0) + 1
        return {"registered": len(rows), "enrolled": sum(versions.values()),
                "versions": versions, "fleet_version": base.version if base else None,
                "latest_rollout": self.rollout_status(latest.id) if latest else None}


def _newer(version: str | None, than: str) -> bool:
    try:
        return version is not None and parse_version(version) > parse_version(than)
    except Exception:  # a device reporting a malformed version never blocks an install
        return False


def _offer(release: Any, delta_base: Any) -> dict[str, Any]:
    offer = {"id": release.id, "version": release.version, "sha256": release.sha256,
             "size": release.size, "url": f"/v1/releases/{release.id}/bundle", "delta": None}
    if delta_base is not None:
        offer["delta"] = {"url": f"/v1/releases/{release.id}/delta", "sha256":
                          release.delta_sha256, "size": release.delta_size,
                          "base_sha256": delta_base.sha256}
    return offer


def _release_dict(row: Any) -> dict[str, Any]:
    return {"id": row.id, "version": row.version, "sha256": row.sha256, "size": row.size,
            "tier": row.tier, "created_at": row.created_at, "delta_size": row.delta_size,
            "delta_base_id": row.delta_base_id}


def _device_report(row: Any) -> DeviceReport:
    metrics = json.loads(row.metrics or "{}")
    return DeviceReport(
        device_id=row.device_id, status=row.status, version=row.version, reason=row.reason,
        samples=int(metrics.get("samples", 0)), errors=int(metrics.get("errors", 0)),
        latency_ms=metrics.get("latency_ms"), confidence=metrics.get("confidence"),
        escalation=metrics.get("escalation"))

