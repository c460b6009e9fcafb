"""optimize: the smallest or fastest per-layer plan whose *measured* metric drop fits the budget.

1. Analyze (:func:`edgetune.optimize.analysis.analyze`): every layer's candidates with their
   predicted model-output noise, exact weight bytes and profiled latency.
2. Solve: the integer program of :mod:`.solver` picks one candidate per layer minimizing size
   or latency under a *noise budget*. Output noise adds up across layers (independent
   rounding errors), so the budget is one linear constraint.
3. Verify: build the plan with :func:`~edgetune.transforms.plan.apply_plan`, evaluate it on the
   held-out data, and time it interleaved with float32.
4. Correct and search again: the map from noise to metric drop (``drop = beta * noise^gamma``,
   gamma 1 for fidelity and 1/2 for label metrics, where flips grow with the noise's standard
   deviation) is refitted on every verified point, and the noise budget moves inside the
   bracket [largest budget verified within the drop, smallest ILP budget verified outside it]
   until the bracket closes, the verifications or the time budget run out.

The result is always a verified model: the best candidate that met the budget, or float32
itself (drop 0) with the reason when none did. With ``--objective latency`` a candidate slower
than float32 is never returned, and no layer gets a choice that profiled slower than float.
Verified evaluations are cached in memory, and on disk with ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgetune._version import __version__
from edgetune.benchmark.latency import measure_interleaved
from edgetune.core.data import BoundData
from edgetune.core.metrics import RunOutputs
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.optimize.analysis import AnalyzeResult, ChoiceCost, DataSpec, analyze
from edgetune.optimize.candidates import transition_kind
from edgetune.optimize.config import Objective, OptimizeConfig
from edgetune.optimize.result import OptimizeResult, SearchStep, Verified
from edgetune.optimize.solver import Edge, Option, Problem, solve
from edgetune.runtimes import Session, SessionOptions, get_runtime
from edgetune.transforms.ort_plan import GLUE_OPS
from edgetune.transforms.plan import LayerChoice, Plan, Precision, QuantLayer, apply_plan
from edgetune.validate.evaluate import run_outputs

__all__ = ["optimize", "verify_plan"]

log = logging.getLogger(__name__)

_MAX_STEPS = 40
_BRACKET = 1.3
"""Stop when the noise budgets known to pass and to fail are within this factor."""


def optimize(
    model: Model | str | Path,
    config: OptimizeConfig,
    *,
    data: DataSpec,
    eval_data: DataSpec,
    analysis: AnalyzeResult | None = None,
    progress: Progress = NULL_PROGRESS,
) -> OptimizeResult:
    """Search per-layer precisions for ``model`` under ``config``; see the module doc."""
    started = time.perf_counter()
    if analysis is None:
        analysis = analyze(model, config.analyze, data=data, eval_data=eval_data, progress=progress)
    search = _Search(analysis, config, started, progress)
    search.run()
    return search.result()


# --------------------------------------------------------------------------- noise -> drop


@dataclass(kw_only=True)
class _NoiseModel:
    """``drop = beta * noise ** gamma``, beta refitted on every measured point: whole verified
    plans when there are any (their drops stand above the metric's sampling noise), else the
    single-layer measurements of the analysis."""

    gamma: float
    points: list[tuple[float, float]] = field(default_factory=list)
    plan_points: list[tuple[float, float]] = field(default_factory=list)

    def add(self, noise: float, drop: float | None, *, plan: bool = False) -> None:
        if drop is not None and noise > 0:
            (self.plan_points if plan else self.points).append((noise, drop))

    @property
    def beta(self) -> float | None:
        for points in (self.plan_points, self.points):
            ratios = [d / n**self.gamma for n, d in points if d > 0]
            if ratios:
                return statistics.median(ratios)
        return None

    def predict(self, noise: float) -> float | None:
        beta = self.beta
        return None if beta is None else beta * noise**self.gamma

    def budget_for(self, drop: float) -> float | None:
        beta = self.beta
        return None if beta is None or drop <= 0 else (drop / beta) ** (1.0 / self.gamma)


# --------------------------------------------------------------------------- search


class _Search:
    def __init__(self, analysis: AnalyzeResult, config: OptimizeConfig, started: float,
                 progress: Progress) -> None:
        self.analysis, self.config, self.started, self.progress = analysis, config, started, progress
        ctx = analysis.context
        self.layers = ctx.prepared.layers()
        self.by_name = {a.name: a for a in analysis.layers}
        self.eval, self.reference = _limit(ctx.eval_data, ctx.reference, config.eval_limit)
        self.baseline = ctx.metric(self.reference, self.reference).value
        runtime = get_runtime("onnxruntime")
        self.options = SessionOptions(threads=config.analyze.threads)
        self.fp32_session = runtime.session(ctx.source, self.options)
        self.feeds = list(self.eval.feeds(limit=8))
        self.fp32_p50 = measure_interleaved({"fp32": self.fp32_session}, self.feeds, config.latency)["fp32"].p50
        self.noise = _NoiseModel(gamma=1.0 if ctx.metric.name == "fidelity" else 0.5)
        for a in analysis.layers:
            for c in a.choices:
                self.noise.add(c.sensitivity.output_noise, c.sensitivity.metric_drop)
        self.table = _option_table(self.layers, self.by_name, config.objective)
        self.edges = _edges(ctx.prepared.model, self.layers, analysis) if config.objective is Objective.LATENCY else []
        self.candidates: list[Verified] = [self._fp32()]
        self.cache: dict[str, int] = {}
        self.steps: list[SearchStep] = []
        self.verifications = 0
        self.stopped = ""
        self._free_cost: float | None = None
        self.noise_scale: dict[Precision, float] = {}
        """Per precision, how much more noise verified plans showed than its layers predicted."""

    # ----- verification

    def _fp32(self) -> Verified:
        source = self.analysis.context.source
        return Verified(label="float32", plan=Plan(model_name=source.name), metric=self.baseline,
                        drop=0.0, size_bytes=source.size_bytes, latency_ratio=1.0,
                        p50_ms=self.fp32_p50, model=source)

    def verify(self, plan: Plan, label: str, noise: float) -> int:
        """Index of the verified candidate for ``plan`` (built and evaluated once)."""
        key = plan.fingerprint()
        if key in self.cache:
            return self.cache[key]
        started = time.perf_counter()
        cached = self._disk_get(key)
        if cached is not None:
            v = Verified(label=label, plan=plan, predicted_noise=noise, cached=True,
                         predicted_drop=self.noise.predict(noise), **cached)
        else:
            v = self._measure(plan, label, noise)
            self.verifications += 1
            self._disk_put(key, v)
        self.candidates.append(replace(v, seconds=time.perf_counter() - started))
        self.cache[key] = len(self.candidates) - 1
        return self.cache[key]

    def _measure(self, plan: Plan, label: str, noise: float) -> Verified:
        ctx = self.analysis.context
        built = apply_plan(ctx.source, plan, prepared=ctx.prepared)
        session = get_runtime("onnxruntime").session(built.model, self.options)
        value = ctx.metric(run_outputs(session, self.eval), self.reference).value
        ratio = self._latency_ratio(session)
        log.info("%s: %s %.5f (drop %.5f), %d bytes, latency x%.2f", label, ctx.metric.name, value,
                 self.baseline - value, built.model.size_bytes, ratio)
        return Verified(label=label, plan=plan, metric=value, drop=self.baseline - value,
                        size_bytes=built.model.size_bytes, latency_ratio=ratio,
                        p50_ms=ratio * self.fp32_p50, predicted_noise=noise,
                        predicted_drop=self.noise.predict(noise), applied=built.applied,
                        warnings=built.warnings, model=built.model)

    def _latency_ratio(self, session: Session) -> float:
        lat = measure_interleaved({"fp32": self.fp32_session, "candidate": session}, self.feeds,
                                  self.config.latency)
        return lat["candidate"].p50 / max(lat["fp32"].p50, 1e-9)

    # ----- disk cache

    def _disk_key(self, key: str) -> Path | None:
        if self.config.cache_dir is None:
            return None
        ctx = self.analysis.context
        parts = [ctx.prepared.source_sha256, key, ctx.metric.name, str(len(self.reference)),
                 _data_digest(self.feeds), __version__]
        return Path(self.config.cache_dir) / (hashlib.sha256("|".join(parts).encode()).hexdigest()[:32] + ".json")

    def _disk_get(self, key: str) -> dict[str, Any] | None:
        path = self._disk_key(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {k: data[k] for k in ("metric", "drop", "size_bytes", "latency_ratio", "p50_ms", "applied")}
        except (OSError, ValueError, KeyError):
            return None

    def _disk_put(self, key: str, v: Verified) -> None:
        path = self._disk_key(key)
        if path is None:
            return
        from edgetune.core.fileio import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {"metric": v.metric, "drop": v.drop, "size_bytes": v.size_bytes,
                  "latency_ratio": v.latency_ratio, "p50_ms": v.p50_ms, "applied": v.applied}
        atomic_write_text(path, json.dumps(fields), "evaluation cache")

    # ----- loop

    def run(self) -> None:
        self.progress.start("verifying candidates", self.config.max_verifications)
        lo, hi = 0.0, math.inf  # noise budgets known to pass, and to fail
        anchors: list[Verified] = []
        for label, choices in self._anchors():
            if self._out_of_time() or self.verifications >= self.config.max_verifications:
                break
            noise = self._noise_of(choices)
            c = self.candidates[self.verify(self._plan(choices), label, noise)]
            anchors.append(c)
            self.noise.add(noise, c.drop, plan=True)
            self.progress.advance()
            if c.meets(self.config.max_drop):
                lo = max(lo, noise)
            # A failing anchor does not cap the bracket: it is not the ILP's plan at that
            # budget, and its drop may come from what the additive noise model misses (on
            # MiniLM, uniform 8-bit fails at a predicted noise whose ILP plan passes).
        if not self._out_of_time() and self.verifications < self.config.max_verifications:
            self._calibrate_static(anchors)
        if self._out_of_time():
            self.stopped = "time budget reached"
        else:
            self._bracket(self._initial_budget(lo, hi), lo, hi)
        self.progress.finish()

    def _anchors(self) -> list[tuple[str, dict[str, LayerChoice]]]:
        """Uniform plans verified first: they are the corners of the search space, and each one
        that passes or fails opens the noise-budget bracket with a real measurement."""
        specs: list[tuple[str, tuple[Precision, ...], str | None]]
        if self.config.objective is Objective.SIZE:
            specs = [("uniform int4 (most accurate settings per layer)", (Precision.INT4,), None),
                     ("uniform 8-bit (most accurate settings per layer)",
                      (Precision.INT8, Precision.INT8_DYNAMIC), None)]
        else:
            specs = [(f"uniform {cls} (fastest 8-bit kernel)", (p,), cls)
                     for p, cls in self._fast_classes()]
        out = []
        for label, precisions, cls in specs:
            choices = _uniform(self.layers, self.by_name, precisions, cls)
            if choices:
                out.append((label, choices))
        return out

    def _calibrate_static(self, anchors: Sequence[Verified]) -> None:
        """Correct static INT8's predicted noise when a plan shows it is underestimated.

        Static INT8 re-quantizes activations that several layers share, and its errors can be
        correlated, which the additive model misses. When the anchor mixing static and dynamic
        INT8 shows more drop per unit of predicted noise than the same layers all dynamic, the
        difference is attributed to the static layers, and their noise is scaled by it
        (measured on MiniLM: predicted drop 0.009, measured 0.027)."""
        if self.config.objective is not Objective.SIZE:
            return  # the latency anchors are one kernel class each: nothing mixed to compare
        mixed = next((c for c in anchors if any(v.precision is Precision.INT8 for v in c.plan.layers.values())), None)
        if mixed is None or mixed.predicted_drop is None or mixed.drop <= 1.5 * mixed.predicted_drop:
            return  # no anchor, or its drop was about as predicted
        static = self._noise_of({k: v for k, v in mixed.plan.layers.items() if v.precision is Precision.INT8})
        dynamic = _uniform(self.layers, self.by_name, (Precision.INT8_DYNAMIC,), None)
        if static <= 0 or not any(c.precision is Precision.INT8_DYNAMIC for c in dynamic.values()):
            return
        noise = self._noise_of(dynamic)
        c = self.candidates[self.verify(self._plan(dynamic), "uniform int8-dynamic (calibrates static INT8)", noise)]
        self.noise.add(noise, c.drop, plan=True)
        self.progress.advance()
        scale = static_noise_scale(mixed=(mixed.predicted_noise, mixed.drop), static_noise=static,
                                   dynamic=(noise, c.drop), gamma=self.noise.gamma)
        if scale is not None and scale > 1.5:
            self.noise_scale[Precision.INT8] = min(scale, 100.0)
            effective = mixed.predicted_noise + (self.noise_scale[Precision.INT8] - 1.0) * static
            point = (mixed.predicted_noise, mixed.drop)
            if point in self.noise.plan_points:  # refit with the noise it behaved like
                self.noise.plan_points[self.noise.plan_points.index(point)] = (effective, mixed.drop)
            log.info("static INT8 noise is %.1fx its prediction (uniform 8-bit dropped %.4f); "
                     "scaling it", scale, mixed.drop)

    def _corrected_noise(self, c: ChoiceCost) -> float:
        """A candidate's predicted output noise, corrected by what verified plans showed."""
        return c.sensitivity.output_noise * self.noise_scale.get(c.choice.precision, 1.0)

    def _fast_classes(self) -> list[tuple[Precision, str]]:
        """The fastest static and dynamic INT8 kernel classes, when faster than float."""
        walls = self.analysis.profiles.p50_ms
        base = walls.get("float", math.inf)
        out = []
        for precision, prefix in ((Precision.INT8, "int8-"), (Precision.INT8_DYNAMIC, "dynamic-")):
            classes = [c for c in walls if c.startswith(prefix) and walls[c] < base]
            if classes:
                out.append((precision, min(classes, key=lambda c: walls[c])))
        return out

    def _bracket(self, budget: float, lo: float, hi: float) -> None:
        floor, _ = self._noise_limits()
        for step in range(_MAX_STEPS):
            if (reason := self._should_stop(lo, hi, budget, floor)):
                self.stopped = reason
                return
            solution = solve(self._problem(budget))
            if solution is None:
                hi, budget = budget, budget / 4
                continue
            picks = self._choices(solution.picks)
            before = self.verifications
            index = self.verify(self._plan(picks), f"ILP at noise budget {budget:.3g}", solution.noise)
            c = self.candidates[index]
            ok = c.meets(self.config.max_drop)
            if self.verifications > before:  # a new measurement, not a plan seen before
                self.noise.add(solution.noise, c.drop, plan=True)
                self.progress.advance()
            self.steps.append(SearchStep(step=step, budget=budget, candidate=index, feasible=ok))
            lo, hi = (max(lo, budget), hi) if ok else (lo, min(hi, budget))
            if ok and solution.cost <= self._unconstrained_cost() + 1e-9:
                self.stopped = "the best plan without any noise limit meets the budget"
                return
            budget = self._next_budget(lo, hi, budget, ok)
        self.stopped = "step limit"

    def _unconstrained_cost(self) -> float:
        """Cost of the best plan with no noise limit (solved once)."""
        if self._free_cost is None:
            free = solve(self._problem(math.inf))
            self._free_cost = free.cost if free is not None else -math.inf
        return self._free_cost

    def _should_stop(self, lo: float, hi: float, budget: float, floor: float) -> str:
        if self.verifications >= self.config.max_verifications:
            return f"{self.verifications} verifications done (max_verifications)"
        if self._out_of_time():
            return "time budget reached"
        if lo > 0 and hi < math.inf and hi / lo <= _BRACKET:
            return f"converged: noise budgets {lo:.3g} (within the drop) and {hi:.3g} (outside)"
        if lo == 0 and budget < floor:
            return "no quantized plan met the budget (even the least noisy one failed)"
        return ""

    def _out_of_time(self) -> bool:
        if self.config.time_budget_s is None:
            return False
        spent = [c.seconds for c in self.candidates[1:] if not c.cached]
        next_cost = statistics.median(spent) if spent else 0.0
        return time.perf_counter() - self.started + next_cost > self.config.time_budget_s

    def _next_budget(self, lo: float, hi: float, budget: float, ok: bool) -> float:
        """The refitted estimate when it falls inside the bracket, else bisect or step by 4."""
        guess = self.noise.budget_for(self.config.max_drop)
        step = math.sqrt(_BRACKET)
        if guess is not None and lo * step < guess < hi / step and abs(math.log(guess / budget)) > math.log(step):
            return guess
        if hi == math.inf:
            return budget * 4
        if lo == 0:
            return budget / 4
        return math.sqrt(lo * hi)

    def _initial_budget(self, lo: float, hi: float) -> float:
        """The noise model's estimate inside the anchors' bracket, else the bracket's middle."""
        guess = self.noise.budget_for(self.config.max_drop)
        if guess is not None and lo < guess < hi:
            return guess
        if lo > 0 and hi < math.inf:
            return math.sqrt(lo * hi)
        if lo > 0:
            return lo * 2
        if hi < math.inf:
            return hi / 4
        floor, ceiling = self._noise_limits()
        return math.sqrt(max(floor, 1e-12) * max(ceiling, 1e-12))

    # ----- problem

    def _problem(self, budget: float) -> Problem:
        options = [[Option(cost=cost, noise=self._corrected_noise(c), kind=transition_kind(c.choice))
                    for c, cost in row] for row in self.table]
        return Problem(options=options, budget=budget, edges=self.edges)

    def _choices(self, picks: Sequence[int]) -> dict[str, LayerChoice]:
        return {layer.name: self.table[i][p][0].choice for i, (layer, p) in enumerate(zip(self.layers, picks, strict=True))}

    def _noise_of(self, choices: Mapping[str, LayerChoice]) -> float:
        total = 0.0
        for name, choice in choices.items():
            match = next((c for c in self.by_name[name].choices if c.choice == choice), None)
            total += self._corrected_noise(match) if match is not None else 0.0
        return total

    def _noise_limits(self) -> tuple[float, float]:
        """(least noise of any quantized option, noise of the cheapest plan)."""
        quantized = [self._corrected_noise(c) for row in self.table for c, _ in row if c.choice.is_quantized]
        floor = min(quantized) if quantized else 0.0
        ceiling = sum(self._corrected_noise(min(row, key=lambda t: t[1])[0]) for row in self.table)
        return floor, ceiling

    def _plan(self, choices: Mapping[str, LayerChoice]) -> Plan:
        ctx, cfg = self.analysis.context, self.config.analyze
        return Plan(layers={k: v for k, v in choices.items() if v.is_quantized},
                    target_isa=self.analysis.target_isa, model_name=ctx.source.name,
                    model_sha256=ctx.prepared.source_sha256, preprocess=cfg.preprocess,
                    calib_limit=cfg.calib_limit, percentile=cfg.percentile)

    # ----- result

    def result(self) -> OptimizeResult:
        chosen = self._choose()
        c = self.candidates[chosen]
        model = c.model if c.model is not None else self._rebuild(c.plan)
        reasons = self._reasons(chosen)
        plan = c.plan.with_layers(c.plan.layers, **self._plan_info(c, reasons))
        return OptimizeResult(
            model=model.with_proto(model.proto, name=f"{self.analysis.context.source.name}_mixed"),
            plan=plan, chosen=chosen, candidates=self.candidates, steps=self.steps,
            meets_budget=c.meets(self.config.max_drop), baseline_metric=self.baseline,
            max_drop=self.config.max_drop, objective=self.config.objective, reasons=reasons,
            stopped=self.stopped, seconds=time.perf_counter() - self.started, analysis=self.analysis)

    def _choose(self) -> int:
        ok = [i for i, c in enumerate(self.candidates) if c.meets(self.config.max_drop)]
        if self.config.objective is Objective.LATENCY:
            ok = [i for i in ok if self.candidates[i].latency_ratio <= 1.0]
            return min(ok, key=lambda i: (self.candidates[i].latency_ratio, -self.candidates[i].metric))
        return min(ok, key=lambda i: (self.candidates[i].size_bytes, -self.candidates[i].metric))

    def _rebuild(self, plan: Plan) -> Model:
        ctx = self.analysis.context
        return apply_plan(ctx.source, plan, prepared=ctx.prepared).model

    def _reasons(self, chosen: int) -> list[str]:
        c, fp32 = self.candidates[chosen], self.candidates[0]
        metric, cfg = self.analysis.metric_name, self.config
        out = [
            f"objective {cfg.objective.value} under a {metric} drop of at most {cfg.max_drop:g}: "
            f"chose '{c.label}' out of {len(self.candidates)} verified candidates",
            f"{metric} {c.metric:.5f} vs float32 {self.baseline:.5f} (drop {c.drop:+.5f}); size "
            f"{c.size_bytes / max(fp32.size_bytes, 1):.1%} of float32; p50 x{c.latency_ratio:.2f} of "
            f"float32 (measured interleaved)",
            f"search stopped: {self.stopped}; {self.verifications} builds evaluated",
        ]
        out += [f"{p.value} noise scaled x{k:.1f}: verified plans showed that much more than its layers predicted"
                for p, k in self.noise_scale.items()]
        if chosen == 0:
            why = ("no quantized candidate both met the budget and ran no slower than float32 (do no harm)"
                   if cfg.objective is Objective.LATENCY else "no quantized candidate met the budget")
            out.append(f"returning float32: {why}")
        if c.precisions():
            out.append("precisions: " + ", ".join(f"{k} x{v}" for k, v in c.precisions().items()))
        return out

    def _plan_info(self, c: Verified, reasons: list[str]) -> dict[str, Any]:
        per_layer = {}
        for name, choice in c.plan.layers.items():
            match = next((x for x in self.by_name[name].choices if x.choice == choice), None)
            if match is not None:
                s = match.sensitivity
                per_layer[name] = (f"{choice.label()}: model-output SQNR {s.output_sqnr_db:.1f} dB, "
                                   f"{match.size_bytes} weight bytes")
        return {"objective": self.config.objective.value, "max_drop": self.config.max_drop,
                "metric": self.analysis.metric_name, "baseline_metric": self.baseline,
                "verified": {"metric": c.metric, "drop": c.drop, "size_bytes": c.size_bytes,
                             "latency_ratio": c.latency_ratio, "eval_samples": len(self.reference)},
                "meets_budget": c.meets(self.config.max_drop), "reasons": reasons,
                "layer_reasons": per_layer, "edgetune_version": __version__}


def static_noise_scale(*, mixed: tuple[float, float], static_noise: float,
                       dynamic: tuple[float, float], gamma: float) -> float | None:
    """How many times its prediction the static layers' noise was, from two verified plans
    given as (predicted noise, measured drop): one mixing static and dynamic INT8, whose static
    layers predicted ``static_noise``, and the same layers all dynamic. The all-dynamic plan
    fixes the drop per unit of noise (``drop = beta * noise**gamma``); the mixed plan's excess
    over that is put on its static layers. None when a drop is not positive."""
    (m_noise, m_drop), (d_noise, d_drop) = mixed, dynamic
    if m_drop <= 0 or d_drop <= 0 or d_noise <= 0 or static_noise <= 0:
        return None
    beta = d_drop / d_noise**gamma
    effective = (m_drop / beta) ** (1.0 / gamma)  # the noise the mixed plan behaved like
    return (effective - (m_noise - static_noise)) / static_noise


# --------------------------------------------------------------------------- tables


def _option_table(layers: Sequence[QuantLayer], by_name: Mapping[str, Any], objective: Objective
                  ) -> list[list[tuple[ChoiceCost, float]]]:
    """Per layer (graph order): the usable candidates and their cost for ``objective``."""
    table = []
    for layer in layers:
        a = by_name[layer.name]
        rows = []
        for c in a.choices:
            cost = _cost(c, a.fp32, objective)
            if cost is not None:
                rows.append((c, cost))
        table.append(rows)
    return table


def _cost(c: ChoiceCost, fp32: ChoiceCost, objective: Objective) -> float | None:
    """The choice's cost for ``objective``; None leaves it out. For latency, a layer stays in
    float where its kernel is slower *unless* the region around it is faster quantized: the
    program weighs that through the transition costs, and no candidate slower than float32
    as a whole is ever returned."""
    if objective is Objective.SIZE:
        return c.size_bytes + 1e-3 * (c.latency_ms or 0.0)
    if fp32.latency_ms is None:
        return c.size_bytes * 1e-12 if not c.choice.is_quantized else None
    if c.latency_ms is None:
        return None
    return c.latency_ms + 1e-10 * c.size_bytes


def _edges(model: Model, layers: Sequence[QuantLayer], analysis: AnalyzeResult) -> list[Edge]:
    """Layer -> layer connections through glue operators, with the Quantize + Dequantize cost
    of the tensor between them (fixed + per-element time fitted on the INT8 profiles)."""
    fits = [(p.qdq_cost, analysis.profiles.scale(cls))
            for cls, p in analysis.profiles.profiles.items() if p.qdq_cost]
    fixed = statistics.median([f[0] * s for f, s in fits]) if fits else 0.0
    per_element = statistics.median([f[1] * s for f, s in fits]) if fits else 0.0
    index = {layer.name: i for i, layer in enumerate(layers)}
    by_act: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        by_act.setdefault(layer.activation, []).append(i)
    consumers: dict[str, list[Any]] = {}
    for node in model.proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = []
    for layer in layers:
        elements = analysis.layer(layer.name).output_elements
        for target in _reachable(layer.output, consumers, by_act):
            out.append(Edge(a=index[layer.name], b=target, penalty=2 * (fixed + per_element * elements)))
    return out


def _reachable(tensor: str, consumers: Mapping[str, list[Any]], by_act: Mapping[str, list[int]]) -> set[int]:
    found, stack, seen = set(by_act.get(tensor, [])), [tensor], {tensor}
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.op_type not in GLUE_OPS:
                continue
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    found.update(by_act.get(out, []))
                    stack.append(out)
    return found


def _uniform(layers: Sequence[QuantLayer], by_name: Mapping[str, Any], precisions: Sequence[Precision],
             kernel: str | None) -> dict[str, LayerChoice]:
    """Each layer's least noisy candidate among ``precisions`` (of kernel class ``kernel`` when
    given); a layer with none takes FP16 weights when it may (same speed as float, half the
    bytes), else stays float."""
    out = {}
    for layer in layers:
        choices = by_name[layer.name].choices
        pool = [c for c in choices if c.choice.precision in precisions and (kernel is None or c.kernel == kernel)]
        pool = pool or [c for c in choices if c.choice.precision is Precision.FP16]
        if pool:
            out[layer.name] = min(pool, key=lambda c: c.sensitivity.output_noise).choice
    return out


def _limit(data: BoundData, reference: RunOutputs, limit: int | None) -> tuple[BoundData, RunOutputs]:
    if limit is None or limit >= len(reference):
        return data, reference
    head, _ = data.split(limit)
    labels = reference.labels[:limit] if reference.labels is not None else None
    return head, RunOutputs(names=reference.names, per_sample=reference.per_sample[:limit], labels=labels)


def _data_digest(feeds: Sequence[Mapping[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            h.update(name.encode())
            h.update(np.ascontiguousarray(feed[name]).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True, kw_only=True)
class PlanCheck:
    """A plan applied and evaluated: does it keep the drop within ``max_drop``?"""

    model: Model
    metric: float
    baseline_metric: float
    drop: float
    max_drop: float | None
    size_bytes: int
    applied: dict[str, str]
    warnings: list[str]

    @property
    def meets_budget(self) -> bool | None:
        return None if self.max_drop is None else self.drop <= self.max_drop + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline_metric": self.baseline_metric, "drop": self.drop,
                "max_drop": self.max_drop, "meets_budget": self.meets_budget,
                "size_bytes": self.size_bytes, "applied": dict(self.applied),
                "warnings": list(self.warnings)}


def verify_plan(model: Model | str | Path, plan: Plan, *, data: DataSpec, eval_data: DataSpec,
                metric: Any = "top1", max_drop: float | None = None) -> PlanCheck:
    """Apply ``plan`` and measure its drop on ``eval_data``; ``max_drop`` defaults to the
    budget recorded in the plan. A plan that misses it is reported as such, not hidden."""
    from edgetune.core.data import bind
    from edgetune.core.metrics import get_metric
    from edgetune.load import load

    source = load(model)
    score = get_metric(metric)
    built = apply_plan(source, plan, data=data)
    bound = bind(eval_data, source)
    rt = get_runtime("onnxruntime")
    reference = run_outputs(rt.session(source), bound)
    value = score(run_outputs(rt.session(built.model), bound), reference).value
    base = score(reference, reference).value
    budget = max_drop if max_drop is not None else plan.info.get("max_drop")
    return PlanCheck(model=built.model, metric=value, baseline_metric=base, drop=base - value,
                     max_drop=float(budget) if budget is not None else None,
                     size_bytes=built.model.size_bytes, applied=built.applied, warnings=built.warnings)
