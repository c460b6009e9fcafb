"""Request bodies the rollout server accepts: strict (unknown fields refused), bounded."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Enroll", "Halt", "Metrics", "Register", "Report", "StartRollout"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Register(_Strict):
    devices: list[str] = Field(min_length=1, max_length=10000)
    tier: str = "any"


class Enroll(_Strict):
    device_id: str = Field(max_length=128)
    code: str = Field(max_length=256)


class StartRollout(_Strict):
    release_id: int
    stages: list[int] = Field(min_length=1, max_length=20)
    policy: dict[str, Any] = Field(default_factory=dict)


class Halt(_Strict):
    reason: str = Field(default="operator request", max_length=500)


class Metrics(_Strict):
    samples: int = Field(default=0, ge=0, le=10**9)
    errors: int = Field(default=0, ge=0, le=10**9)
    latency_ms: float | None = Field(default=None, ge=0)
    confidence: float | None = Field(default=None, ge=0, le=1)
    escalation: float | None = Field(default=None, ge=0, le=1)


class Report(_Strict):
    device_id: str | None = Field(default=None, max_length=128)
    rollout_id: int | None = None
    stage: int | None = Field(default=None, ge=0)
    version: str | None = Field(default=None, max_length=64)
    sha256: str | None = Field(default=None, max_length=64)
    status: Literal["ok", "rejected", "health_failed", "reverted", "revert_unavailable",
                    "installed"]
    reason: str | None = Field(default=None, max_length=500)
    metrics: Metrics | None = None
