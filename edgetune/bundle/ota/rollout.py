"""The rollout policy: who is in each stage, and whether a stage advances, waits or halts.

Pure functions over plain values, so every rule is tested without a server. Each stage has a
*canary* group (devices on the new version) and a *control* group (devices kept on the old
version during the same time window, on the same traffic mix). A stage advances only when enough
of both groups have reported on-device metrics and the canaries are not worse than the control
beyond the policy's limits; any failed install, failed health check or refused bundle in the
canaries halts the rollout, which sends every updated device back to the previous version.

Groups are drawn by hashing ``rollout id : device id``, so membership is stable (a stage only
adds canaries), spread evenly, and reproducible after a server restart. Controls come from the
far end of the same order, so they are the last devices to update.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from itertools import pairwise
from typing import Any

from edgetune.errors import ConfigError

__all__ = [
    "Action",
    "Decision",
    "DeviceReport",
    "GroupStats",
    "RolloutPolicy",
    "decide",
    "parse_stages",
    "plan_stage",
]


@dataclass(frozen=True, kw_only=True)
class RolloutPolicy:
    """When a stage may advance. Limits compare the canary group to the control group."""

    min_control: int = 5
    """Control devices per stage, at least (as many as the canaries when there are more)."""
    soak_s: float = 0.0
    """Seconds a stage runs before it may advance, however good the numbers."""
    stage_timeout_s: float = 3600.0
    """A stage that has not heard from enough devices by then halts."""
    min_report_fraction: float = 1.0
    """Share of canaries and of controls that must have reported before a decision."""
    max_failure_rate: float = 0.0
    """Share of canaries allowed to fail to install, verify or pass the health check."""
    fail_fast: bool = True
    """Halt on the first failure instead of waiting for every canary to report."""
    max_error_increase: float = 0.05
    """Absolute rise of the error rate, also required to be significant (``error_z``)."""
    error_z: float = 2.33
    max_latency_ratio: float = 1.5
    """Median canary latency over median control latency."""
    max_confidence_drop: float = 0.10
    max_escalation_increase: float = 0.10

    def validate(self) -> RolloutPolicy:
        for name in ("soak_s", "max_error_increase", "error_z", "max_confidence_drop",
                     "max_escalation_increase", "max_failure_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"rollout policy {name} must be >= 0; got {getattr(self, name)}")
        if not 0 < self.min_report_fraction <= 1:
            raise ConfigError("rollout policy min_report_fraction must be in (0, 1]; got "
                              f"{self.min_report_fraction}")
        if self.max_latency_ratio < 1 or self.stage_timeout_s <= 0 or self.min_control < 0:
            raise ConfigError("rollout policy needs max_latency_ratio >= 1, stage_timeout_s > 0 "
                              "and min_control >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RolloutPolicy:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown rollout policy field(s) {unknown}; choose from "
                              f"{sorted(known)}")
        return cls(**dict(raw)).validate()


def parse_stages(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,10,100"`` -> (1, 10, 100): increasing percentages ending at 100."""
    try:
        stages = tuple(int(s) for s in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise ConfigError(f"stages {text!r} must be comma-separated percentages, e.g. 1,10,100"
                          ) from None
    ok = stages and stages[-1] == 100 and all(a < b for a, b in pairwise((0, *stages)))
    if not ok:
        raise ConfigError(f"stages {text!r} must increase and end at 100, e.g. 1,10,100")
    return stages


def _order(rollout_id: int, device_id: str) -> str:
    return hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()


def plan_stage(rollout_id: int, devices: Sequence[str], percent: int, policy: RolloutPolicy
               ) -> tuple[list[str], list[str]]:
    """(canaries, controls) of a stage: the first ``percent`` of the hash order, and controls
    from the far end of it (none left at 100%)."""
    order = sorted(devices, key=lambda d: _order(rollout_id, d))
    count = min(len(order), max(1, math.ceil(percent * len(order) / 100)))
    canaries, rest = order[:count], order[count:]
    n_control = min(len(rest), max(policy.min_control, count))
    return canaries, rest[len(rest) - n_control:]


@dataclass(frozen=True, kw_only=True)
class DeviceReport:
    """One device's report for one stage."""

    device_id: str
    status: str
    """``ok``, or why it failed: ``rejected`` (bundle refused), ``health_failed``..."""
    version: str | None = None
    reason: str | None = None
    samples: int = 0
    errors: int = 0
    latency_ms: float | None = None
    confidence: float | None = None
    escalation: float | None = None


@dataclass(frozen=True, kw_only=True)
class GroupStats:
    devices: int
    samples: int
    errors: int
    latency_ms: float | None
    confidence: float | None
    escalation: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.samples if self.samples else None

    @classmethod
    def of(cls, reports: Sequence[DeviceReport]) -> GroupStats:
        return cls(
            devices=len(reports), samples=sum(r.samples for r in reports),
            errors=sum(r.errors for r in reports),
            latency_ms=_median([r.latency_ms for r in reports]),
            confidence=_mean([r.confidence for r in reports]),
            escalation=_mean([r.escalation for r in reports]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GroupStats:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.fmean(present)) if present else None


class Action(str, Enum):
    WAIT = "wait"
    ADVANCE = "advance"
    HALT = "halt"


@dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    reason: str
    canary: GroupStats | None = None
    control: GroupStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason,
                "canary": self.canary.to_dict() if self.canary else None,
                "control": self.control.to_dict() if self.control else None}


def decide(policy: RolloutPolicy, *, version: str, canaries: Sequence[str],
           controls: Sequence[str], reports: Mapping[str, DeviceReport], age_s: float,
           reference: GroupStats | None = None) -> Decision:
    """Advance, wait or halt the current stage. ``reference`` stands in for the control group
    when a stage has none (the last stage, at 100%): the previous stage's control numbers."""
    heard = [reports[d] for d in canaries if d in reports]
    failed = [r for r in heard if r.status != "ok"]
    good = [r for r in heard if r.status == "ok" and r.version == version]
    allowed = policy.max_failure_rate * len(canaries)
    if failed and len(failed) > allowed and policy.fail_fast:
        return _halt_failed(failed, len(canaries))
    control = [reports[d] for d in controls if d in reports and reports[d].status == "ok"]
    waiting = _waiting(policy, len(good) + len(failed), len(canaries), len(control),
                       len(controls), age_s)
    if waiting:
        if age_s >= policy.stage_timeout_s:
            return Decision(action=Action.HALT, reason=f"stage timed out: {waiting}")
        return Decision(action=Action.WAIT, reason=waiting)
    if failed and len(failed) > allowed:
        return _halt_failed(failed, len(canaries))
    canary_stats = GroupStats.of(good)
    control_stats = GroupStats.of(control) if control else reference
    regression = compare(policy, canary_stats, control_stats)
    action = Action.HALT if regression else Action.ADVANCE
    return Decision(action=action, reason=regression or "canaries within limits",
                    canary=canary_stats, control=control_stats)


def _halt_failed(failed: Sequence[DeviceReport], total: int) -> Decision:
    first = failed[0]
    return Decision(action=Action.HALT, reason=f"{len(failed)} of {total} canaries failed "
                    f"({first.status}: {first.reason or 'no reason given'})")


def _waiting(policy: RolloutPolicy, canary_heard: int, canary_n: int, control_heard: int,
             control_n: int, age_s: float) -> str:
    need_canary = math.ceil(policy.min_report_fraction * canary_n)
    need_control = math.ceil(policy.min_report_fraction * control_n)
    if canary_heard < need_canary:
        return f"{canary_heard} of {need_canary} canary reports"
    if control_heard < need_control:
        return f"{control_heard} of {need_control} control reports"
    if age_s < policy.soak_s:
        return f"soaking {age_s:.0f} of {policy.soak_s:.0f} s"
    return ""


def compare(policy: RolloutPolicy, canary: GroupStats, control: GroupStats | None) -> str:
    """The first regression of the canaries against the control, or '' if none."""
    if control is None:
        return ""
    checks = (_error_regression, _latency_regression, _confidence_regression,
              _escalation_regression)
    return next((found for check in checks if (found := check(policy, canary, control))), "")


def _error_regression(policy: RolloutPolicy, canary: GroupStats, control: GroupStats) -> str:
    if canary.error_rate is None or control.error_rate is None:
        return ""
    diff = canary.error_rate - control.error_rate
    pooled = (canary.errors + control.errors) / (canary.samples + control.samples)
    se = math.sqrt(pooled * (1 - pooled) * (1 / canary.samples + 1 / control.samples))
    z = diff / se if se > 0 else (math.inf if diff > 0 else 0.0)
    if diff > policy.max_error_increase and z > policy.error_z:
        return (f"error rate {canary.error_rate:.3f} on canaries vs {control.error_rate:.3f} on "
                f"control (+{diff:.3f}, z={z:.1f})")
    return ""


def _latency_regression(policy: RolloutPolicy, canary: GroupStats, control: GroupStats) -> str:
    if not canary.latency_ms or not control.latency_ms:
        return ""
    ratio = canary.latency_ms / control.latency_ms
    if ratio > policy.max_latency_ratio:
        return (f"latency {canary.latency_ms:.3f} ms on canaries vs {control.latency_ms:.3f} ms "
                f"on control (x{ratio:.2f} > x{policy.max_latency_ratio})")
    return ""


def _confidence_regression(policy: RolloutPolicy, canary: GroupStats, control: GroupStats) -> str:
    if canary.confidence is None or control.confidence is None:
        return ""
    drop = control.confidence - canary.confidence
    if drop > policy.max_confidence_drop:
        return (f"mean confidence {canary.confidence:.3f} on canaries vs "
                f"{control.confidence:.3f} on control (-{drop:.3f})")
    return ""


def _escalation_regression(policy: RolloutPolicy, canary: GroupStats, control: GroupStats) -> str:
    if canary.escalation is None or control.escalation is None:
        return ""
    rise = canary.escalation - control.escalation
    if rise > policy.max_escalation_increase:
        return (f"escalation rate {canary.escalation:.3f} on canaries vs "
                f"{control.escalation:.3f} on control (+{rise:.3f})")
    return ""
