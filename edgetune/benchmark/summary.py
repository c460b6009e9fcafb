"""Turning measurements into verdicts: speedups, the fastest runtime, and plain-spoken notes.

"Never assume the accelerator wins": every runtime slower than the CPU baseline, every INT8
model slower than its float32 sibling, every operator that fell back, and every latency whose
stopping rule was not met is said in a sentence, not left for the reader to spot in a table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from edgetune.runtimes import BASELINE
from edgetune.runtimes.base import OpPlacement, PlacementStatus

__all__ = ["model_notes", "placement_summary", "rank_runtimes"]

ACCELERATORS = {"onnxruntime-cuda", "onnxruntime-tensorrt"}
_QDQ_AS_FLOAT = {"litert"}
"""Runtimes that run a QDQ INT8 model in float (their INT8 comparison would be meaningless)."""
_ON_PAR = 0.03
"""Latency differences smaller than this are called on par, however significant."""
_DIFF_NOTE = 0.05
"""Relative max difference against the baseline above which the outputs are called different."""
_INT8_VARIANTS = {"litert": "litert-int8"}


def placement_summary(ops: Sequence[OpPlacement]) -> dict[str, Any]:
    """Counts per status, the operators off the target, and precision counts."""
    counts = Counter(op.status.value for op in ops)
    return {
        "counts": {s.value: counts.get(s.value, 0) for s in PlacementStatus},
        "devices": dict(Counter(op.device for op in ops)),
        "precisions": dict(Counter(op.precision or "?" for op in ops)),
        "off_target": [op.to_dict() for op in ops if op.status is not PlacementStatus.TARGET],
        "ops": [op.to_dict() for op in ops],
    }


def rank_runtimes(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Speedup of each runtime against the baseline, the fastest one, and notes."""
    ok = [e for e in entries if e.get("status") == "ok" and "latency_ms" in e]
    base = next((e for e in ok if e["runtime"] == BASELINE), None)
    for e in ok:
        e["speedup_vs_baseline"] = (
            base["latency_ms"]["p50"] / e["latency_ms"]["p50"] if base else None
        )
    fastest = min(ok, key=lambda e: e["latency_ms"]["p50"])["runtime"] if ok else None
    notes = [n for e in entries for n in _runtime_notes(e, base)]
    notes += _variant_notes(ok)
    return {"runtimes": entries, "fastest": fastest, "notes": notes}


def _runtime_notes(e: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    name = e["runtime"]
    notes = _speed_notes(e, base) if base is not None and name != BASELINE else []
    counts = (e.get("placement") or {}).get("counts") or {}
    if counts.get("fallback"):
        notes.append(
            f"{name}: {counts['fallback']} operator(s) fell back off {name}'s target engine "
            "(see the placement table)"
        )
    if (e.get("latency_ms") or {}).get("converged") is False:
        lat = e["latency_ms"]
        notes.append(
            f"{name}: the stopping rule was not met before {lat['stop_reason']} ({lat['n']} "
            "runs); the tail percentiles are less certain than asked"
        )
    rel = e.get("rel_diff_vs_baseline")
    if rel is not None and rel > _DIFF_NOTE:
        notes.append(
            f"{name}: on the first input its outputs differ from the baseline's by up to "
            f"{rel:.3g}x the baseline's largest value; run 'edgetune diverge' before trusting "
            "its speed"
        )
    if e.get("status") == "error":
        notes.append(f"{name} failed: {e.get('reason')}")
    return notes + [n for n in e.get("notes", []) if n not in notes]


def _speed_notes(e: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Slower than the baseline, said plainly; within the noise, said as such."""
    speedup = e.get("speedup_vs_baseline")
    if speedup is None or speedup >= 1.0:
        return []
    name = e["runtime"]
    kind = "the accelerator" if name in ACCELERATORS else name
    if speedup > 1.0 - _ON_PAR or _overlap(e["latency_ms"], base["latency_ms"]):
        return [
            f"{name} is not faster than the CPU baseline (x{speedup:.2f}, within "
            f"{_ON_PAR:.0%} or the p50 confidence intervals)"
        ]
    return [
        f"{name} is slower than the CPU baseline: x{speedup:.2f} of onnxruntime's speed "
        f"({_p50(e)} vs {_p50(base)}); {kind} does not win here"
    ]


def _slower(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is slower than ``b`` beyond the noise: p50 more than 3% higher, disjoint intervals."""
    return bool(a["p50"] > b["p50"] * (1.0 + _ON_PAR) and not _overlap(a, b))


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    (a_low, a_high), (b_low, b_high) = a["ci"]["p50"], b["ci"]["p50"]
    if None in (a_low, a_high, b_low, b_high):
        return False
    return bool(a_low <= b_high and b_low <= a_high)


def _variant_notes(ok: list[dict[str, Any]]) -> list[str]:
    by_name = {e["runtime"]: e for e in ok}
    notes = []
    for float_rt, int8_rt in _INT8_VARIANTS.items():
        f, q = by_name.get(float_rt), by_name.get(int8_rt)
        if f and q and _slower(q["latency_ms"], f["latency_ms"]):
            ratio = q["latency_ms"]["p50"] / f["latency_ms"]["p50"]
            notes.append(
                f"INT8 is slower: {int8_rt} takes x{ratio:.2f} the time of {float_rt} "
                f"({_p50(q)} vs {_p50(f)})"
            )
    return notes


def model_notes(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add cross-model notes: an INT8 model slower than a float32 model with the same inputs,
    on the same runtime."""
    for q in (m for m in models if m["precision"] == "int8"):
        for f in (m for m in models if m["precision"] != "int8" and m["inputs"] == q["inputs"]):
            q["notes"] += _int8_vs_float(q, f)
    return models


def _int8_vs_float(q: dict[str, Any], f: dict[str, Any]) -> list[str]:
    fast = {e["runtime"]: e for e in f["runtimes"] if "latency_ms" in e}
    notes = []
    usable = (e for e in q["runtimes"] if "latency_ms" in e and e["runtime"] in fast)
    for e in (e for e in usable if e["runtime"] not in _QDQ_AS_FLOAT):
        ratio = e["latency_ms"]["p50"] / fast[e["runtime"]]["latency_ms"]["p50"]
        if _slower(e["latency_ms"], fast[e["runtime"]]["latency_ms"]):
            notes.append(
                f"INT8 is slower: {q['model']} takes x{ratio:.2f} the time of float32 "
                f"{f['model']} on {e['runtime']} ({_p50(e)} vs {_p50(fast[e['runtime']])})"
            )
    return notes


def _p50(e: dict[str, Any]) -> str:
    return f"p50 {e['latency_ms']['p50']:.3f} ms"
