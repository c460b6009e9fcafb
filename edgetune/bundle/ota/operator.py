"""The operator's side of the rollout server: register devices, upload releases, steer rollouts.

Thin functions over :class:`~edgetune.bundle.ota.http.Http`, shared by ``edgetune ota`` and
the fleet benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgetune.bundle.ota.http import Http

__all__ = ["fleet_summary", "halt", "register", "release", "rollout", "upload"]


def register(http: Http, device_ids: Sequence[str], tier: str = "any") -> dict[str, str]:
    """One-time enrollment codes, one per new device."""
    return dict(http.json("POST", "/v1/devices", {"devices": list(device_ids),
                                                  "tier": tier})["codes"])


def upload(http: Http, bundle: Path) -> dict[str, Any]:
    with Path(bundle).open("rb") as body:
        size = Path(bundle).stat().st_size
        return dict(http.json("POST", "/v1/releases", body=body, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(size)}))


def release(http: Http, bundle: Path, stages: Sequence[int],
            policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Upload a bundle and start its staged rollout."""
    stored = upload(http, bundle)
    return start(http, int(stored["id"]), stages, policy)


def start(http: Http, release_id: int, stages: Sequence[int],
          policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return dict(http.json("POST", "/v1/rollouts", {"release_id": release_id,
                                                   "stages": list(stages),
                                                   "policy": dict(policy or {})}))


def rollout(http: Http, rollout_id: int) -> dict[str, Any]:
    return dict(http.json("GET", f"/v1/rollouts/{rollout_id}"))


def halt(http: Http, rollout_id: int, reason: str) -> dict[str, Any]:
    return dict(http.json("POST", f"/v1/rollouts/{rollout_id}/halt", {"reason": reason}))


def fleet_summary(http: Http) -> dict[str, Any]:
    return dict(http.json("GET", "/v1/fleet"))
