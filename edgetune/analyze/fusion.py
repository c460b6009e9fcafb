"""Fusion candidates in the graph against what the runtime actually fused.

:func:`find_candidates` finds the patterns a fusing runtime should merge into one kernel:
Conv+BatchNormalization(+activation), Conv+activation, MatMul+Add(+activation),
Gemm+activation, LayerNorm spelled in basic ops, Add+LayerNorm (skip layer norm), GELU spelled
in basic ops (erf or tanh form), bias+GELU, and QDQ groups (DequantizeLinear -> op ->
QuantizeLinear) a runtime turns into an integer kernel. Each candidate knows its internal
tensors: the ones that disappear when the pattern runs as one kernel. A candidate whose
internal tensor is a graph output or feeds a node outside the pattern cannot be fused; it is
reported as blocked, with that reason.

:func:`compare` reads the runtime's optimized graph (see :mod:`edgetune.analyze.layout`): a
candidate fired when all of its internal tensors are gone, partly fired when some are, and did
not fire when none are. Why not is told where the graph or the runtime's known fusion rules
can tell (an activation the runtime does not fuse, a node taken by another fusion).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgetune.analyze._graphinfo import GraphInfo, NodeInfo, TensorKind
from edgetune.analyze.layout import RuntimeView

__all__ = ["Candidate", "Finding", "FusionReport", "compare", "find_candidates"]

ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
               "Elu", "Selu", "Softplus", "Softsign", "PRelu", "ThresholdedRelu", "Mish"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_STATUSES = ("fused", "partial", "not fused", "blocked", "unknown")
_GELU_CORE = {"Div", "Mul", "Add", "Pow", "Sqrt", "Erf", "Tanh"}

@dataclass(frozen=True, kw_only=True)
class Candidate:
    kind: str
    pattern: str
    nodes: tuple[str, ...]
    internal: tuple[str, ...]
    output: str
    blocked: str | None = None
    activation: str | None = None
    variant: str | None = None
    """How a spelled-out pattern is written (e.g. the order of GELU's multiplications)."""


@dataclass(frozen=True, kw_only=True)
class Finding:
    candidate: Candidate
    status: str
    """``fused``, ``partial``, ``not fused``, ``blocked`` or ``unknown``."""
    fused_into: tuple[str, ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {"pattern": c.pattern, "kind": c.kind, "nodes": list(c.nodes),
                "status": self.status, "fused_into": list(self.fused_into),
                "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class FusionReport:
    runtime: str
    version: str
    level: str
    findings: tuple[Finding, ...]
    op_types_before: dict[str, int]
    op_types_after: dict[str, int]
    notes: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        counted = Counter(f.status for f in self.findings)
        return {s: counted.get(s, 0) for s in _STATUSES}

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "version": self.version, "level": self.level,
                "candidates": len(self.findings), "counts": self.counts(),
                "findings": [f.to_dict() for f in self.findings],
                "op_types_before": self.op_types_before, "op_types_after": self.op_types_after,
                "notes": list(self.notes)}


# -- graph helpers -----------------------------------------------------------------------------

class _Graph:
    """Producer and consumer lookups over a :class:`GraphInfo`."""

    def __init__(self, info: GraphInfo) -> None:
        self.info = info
        self.outputs = {t.name for t in info.tensors.values() if t.kind is TensorKind.OUTPUT}

    def users(self, tensor: str) -> list[NodeInfo]:
        found = self.info.tensors.get(tensor)
        return [self.info.nodes[i] for i in found.consumers] if found else []

    def maker(self, tensor: str) -> NodeInfo | None:
        found = self.info.tensors.get(tensor)
        return self.info.nodes[found.producer] if found and found.producer is not None else None

    def const(self, tensor: str) -> bool:
        found = self.info.tensors.get(tensor)
        return found is not None and found.kind in (TensorKind.WEIGHT, TensorKind.CONSTANT)

    def next_op(self, node: NodeInfo, ops: set[str]) -> NodeInfo | None:
        if not node.outputs:
            return None
        return next((u for u in self.users(node.outputs[0]) if u.op_type in ops), None)

    def other_input(self, node: NodeInfo, tensor: str) -> str | None:
        rest = [x for x in node.inputs[:2] if x != tensor]
        if len(rest) == 1:
            return rest[0]
        return tensor if node.inputs[:2] == (tensor, tensor) else None


def _candidate(g: _Graph, kind: str, nodes: list[NodeInfo], **extra: Any) -> Candidate:
    names = {n.name for n in nodes}
    internal = tuple(n.outputs[0] for n in nodes[:-1] if n.outputs)
    return Candidate(kind=kind, pattern=_pattern(nodes, kind),
                     nodes=tuple(n.name for n in nodes), internal=internal,
                     output=nodes[-1].outputs[0], blocked=_blocked(g, internal, names), **extra)


def _pattern(nodes: list[NodeInfo], kind: str) -> str:
    ops = [n.op_type for n in nodes]
    spelled = f"{len(nodes)} ops"
    if kind == "layernorm":
        return f"LayerNorm ({spelled})"
    if kind == "gelu":
        return f"GELU ({'tanh' if 'Tanh' in ops else 'erf'} form, {spelled})"
    if kind == "skip_layernorm":
        return "Add+LayerNorm" if len(nodes) == 2 else f"Add+LayerNorm ({spelled})"
    if kind == "bias_gelu":
        return "Add(bias)+GELU" if len(nodes) == 2 else f"Add(bias)+GELU ({spelled})"
    return "+".join(ops)


def _blocked(g: _Graph, internal: tuple[str, ...], names: set[str]) -> str | None:
    for tensor in internal:
        if tensor in g.outputs:
            return f"{tensor!r} is a graph output, so it must be kept"
        outside = [u for u in g.users(tensor) if u.name not in names]
        if outside:
            return f"{tensor!r} also feeds {outside[0].op_type} {outside[0].name!r}"
    return None


# -- pattern matchers --------------------------------------------------------------------------

def find_candidates(info: GraphInfo) -> list[Candidate]:
    """Every fusion pattern in the graph, in graph order."""
    g = _Graph(info)
    found: list[Candidate] = []
    for node in info.nodes:
        for matcher in (*_MATCHERS.get(node.op_type, ()), _qdq):
            candidate = matcher(g, node)
            if candidate is not None:
                found.append(candidate)
    return found


def _conv(g: _Graph, conv: NodeInfo) -> Candidate | None:
    if len(conv.inputs) < 2 or not g.const(conv.inputs[1]):
        return None
    chain = [conv]
    bn = g.next_op(conv, {"BatchNormalization"})
    if bn is not None and all(g.const(x) for x in bn.inputs[1:5]):
        chain.append(bn)
    act = g.next_op(chain[-1], ACTIVATIONS)
    if act is not None:
        chain.append(act)
    if len(chain) == 1:
        return None
    kind = "conv_bn_act" if bn is not None and bn in chain else "conv_act"
    return _candidate(g, kind, chain, activation=act.op_type if act is not None else None)


def _matmul(g: _Graph, matmul: NodeInfo) -> Candidate | None:
    if len(matmul.inputs) < 2 or not g.const(matmul.inputs[1]):
        return None
    add = g.next_op(matmul, {"Add"})
    if add is None or not g.const(g.other_input(add, matmul.outputs[0]) or ""):
        return None
    chain = [matmul, add]
    act = g.next_op(add, ACTIVATIONS)
    if act is not None:
        chain.append(act)
    return _candidate(g, "matmul_add_act", chain, activation=act.op_type if act else None)


def _gemm(g: _Graph, gemm: NodeInfo) -> Candidate | None:
    act = g.next_op(gemm, ACTIVATIONS)
    if act is None:
        return None
    return _candidate(g, "gemm_act", [gemm, act], activation=act.op_type)


def _layernorm(g: _Graph, mean: NodeInfo) -> Candidate | None:
    chain = _layernorm_chain(g, mean)
    return None if chain is None else _candidate(g, "layernorm", chain)


def _layernorm_chain(g: _Graph, mean: NodeInfo) -> list[NodeInfo] | None:
    """ReduceMean, Sub, Pow (or Mul), ReduceMean, Add eps, Sqrt, Div, then Mul gamma, Add beta."""
    x = mean.inputs[0]
    sub = next((u for u in g.users(mean.outputs[0]) if u.op_type == "Sub" and x in u.inputs), None)
    if sub is None:
        return None
    square = g.next_op(sub, {"Pow", "Mul"})
    var = g.next_op(square, {"ReduceMean"}) if square else None
    eps = g.next_op(var, {"Add"}) if var else None
    sqrt = g.next_op(eps, {"Sqrt"}) if eps else None
    div = g.next_op(sqrt, {"Div"}) if sqrt else None
    steps = [square, var, eps, sqrt, div]
    if div is None or sub.outputs[0] not in div.inputs:
        return None
    chain = [mean, sub, *(n for n in steps if n is not None)]
    if len(chain) != 7:
        return None
    scale = g.next_op(div, {"Mul"})
    if scale is not None and g.const(g.other_input(scale, div.outputs[0]) or ""):
        chain.append(scale)
        shift = g.next_op(scale, {"Add"})
        if shift is not None and g.const(g.other_input(shift, scale.outputs[0]) or ""):
            chain.append(shift)
    return chain


def _skip_layernorm(g: _Graph, add: NodeInfo) -> Candidate | None:
    """A residual Add (two activations) feeding a LayerNorm, op or spelled out."""
    if len(add.inputs) != 2 or any(g.const(x) for x in add.inputs):
        return None
    norm = g.next_op(add, {"LayerNormalization"})
    if norm is not None:
        return _candidate(g, "skip_layernorm", [add, norm])
    mean = g.next_op(add, {"ReduceMean"})
    chain = _layernorm_chain(g, mean) if mean else None
    return None if chain is None else _candidate(g, "skip_layernorm", [add, *chain])


def _gelu(g: _Graph, anchor: NodeInfo) -> Candidate | None:
    found = _gelu_chain(g, anchor)
    return None if found is None else _candidate(g, "gelu", found[0], variant=found[1])


def _gelu_chain(g: _Graph, anchor: NodeInfo) -> tuple[list[NodeInfo], str] | None:
    """Erf or Tanh, then Add 1, then the multiplications by x and 0.5 in either order; x is
    what they multiply by, and the nodes between x and the anchor are the core before it."""
    one = g.next_op(anchor, {"Add"})
    mul = g.next_op(one, {"Mul"}) if one else None
    if one is None or mul is None:
        return None
    tail, x, variant = _gelu_tail(g, mul, one.outputs[0])
    core = _between(g, x, anchor.inputs[0]) if x else None
    if core is None:
        return None
    return [*core, anchor, one, *tail], variant


def _gelu_tail(g: _Graph, mul: NodeInfo, operand: str) -> tuple[list[NodeInfo], str | None, str]:
    """The two multiplications after ``1 + erf``, the tensor x, and which order they use."""
    other = g.other_input(mul, operand) or ""
    if g.const(other):
        last = g.next_op(mul, {"Mul"})
        if last is not None:
            return [mul, last], g.other_input(last, mul.outputs[0]), "(1+erf)*0.5*x"
        return [], None, ""
    half = g.maker(other)
    if half is not None and half.op_type == "Mul" and any(g.const(i) for i in half.inputs):
        return [half, mul], next(i for i in half.inputs if not g.const(i)), "(x*0.5)*(1+erf)"
    last = g.next_op(mul, {"Mul"})
    if last is not None and g.const(g.other_input(last, mul.outputs[0]) or ""):
        return [mul, last], other, "x*(1+erf)*0.5"
    return [], None, ""


def _between(g: _Graph, x: str, tensor: str, limit: int = 6) -> list[NodeInfo] | None:
    """Elementwise nodes computing ``tensor`` from ``x`` and constants, in graph order."""
    found: dict[str, NodeInfo] = {}
    stack = [tensor]
    while stack:
        name = stack.pop()
        if name == x or g.const(name):
            continue
        node = g.maker(name)
        if node is None or node.op_type not in _GELU_CORE or len(found) >= limit:
            return None
        if node.name not in found:
            found[node.name] = node
            stack.extend(node.inputs)
    return sorted(found.values(), key=lambda n: n.index) or None


def _bias_gelu(g: _Graph, add: NodeInfo) -> Candidate | None:
    """An Add of a constant bias feeding a GELU (op or spelled out)."""
    if not any(g.const(x) for x in add.inputs):
        return None
    gelu = g.next_op(add, {"Gelu"})
    if gelu is not None:
        return _candidate(g, "bias_gelu", [add, gelu])
    for user in g.users(add.outputs[0]):
        anchor = _gelu_anchor(g, user)
        found = _gelu_chain(g, anchor) if anchor else None
        if found is not None and add.outputs[0] in found[0][0].inputs:
            return _candidate(g, "bias_gelu", [add, *found[0]], variant=found[1])
    return None


def _gelu_anchor(g: _Graph, node: NodeInfo) -> NodeInfo | None:
    """The Erf or Tanh reached from ``node`` through at most four elementwise nodes."""
    for _ in range(5):
        if node.op_type in ("Erf", "Tanh"):
            return node
        nxt = next((u for u in g.users(node.outputs[0]) if u.op_type in _GELU_CORE), None)
        if nxt is None:
            return None
        node = nxt
    return None


def _qdq(g: _Graph, node: NodeInfo) -> Candidate | None:
    """DequantizeLinear of an activation -> node -> QuantizeLinear: an integer kernel."""
    if node.op_type in _QDQ or not node.outputs:
        return None
    makers = [g.maker(x) for x in node.inputs]
    dqs = [m for m in makers if m is not None and m.op_type == "DequantizeLinear"]
    if not any(not g.const(d.inputs[0]) for d in dqs):
        return None
    q = g.next_op(node, {"QuantizeLinear"})
    if q is None:
        return None
    chain = [*sorted(dqs, key=lambda d: d.index), node, q]
    internal = tuple(n.outputs[0] for n in chain[:-1])
    return Candidate(kind="qdq", pattern=f"QDQ {node.op_type}", nodes=tuple(n.name for n in chain),
                     internal=internal, output=q.outputs[0],
                     blocked=_blocked(g, (node.outputs[0],), {q.name}))


_Matcher = Any
_MATCHERS: dict[str, tuple[_Matcher, ...]] = {
    "Conv": (_conv,),
    "MatMul": (_matmul,),
    "Gemm": (_gemm,),
    "ReduceMean": (_layernorm,),
    "Add": (_skip_layernorm, _bias_gelu),
    "Erf": (_gelu,),
    "Tanh": (_gelu,),
}


# -- comparing with the runtime ----------------------------------------------------------------

def compare(info: GraphInfo, view: RuntimeView,
            candidates: list[Candidate] | None = None) -> FusionReport:
    """Which candidates the runtime fused, judged from its optimized graph."""
    candidates = candidates if candidates is not None else find_candidates(info)
    before = dict(sorted(Counter(n.op_type for n in info.nodes).items()))
    if view.optimized is None:
        findings = [Finding(candidate=c, status="unknown", reason=f"runtime {view.runtime!r} "
                            "exposes no optimized graph") for c in candidates]
        return FusionReport(runtime=view.runtime, version=view.version, level=view.level,
                            findings=tuple(findings), op_types_before=before, op_types_after={},
                            notes=view.notes)
    optimized = _Optimized(view.optimized)
    first = [_judge(c, optimized) for c in candidates]
    findings = [_explain(f, first, view.runtime, info) for f in first]
    return FusionReport(runtime=view.runtime, version=view.version, level=view.level,
                        findings=tuple(findings), op_types_before=before,
                        op_types_after=optimized.op_types(), notes=view.notes)


class _Optimized:
    def __init__(self, proto: Any) -> None:
        self.nodes = list(proto.graph.node)
        self.tensors = {x for n in self.nodes for x in (*n.input, *n.output)}
        self.producer = {out: n for n in self.nodes for out in n.output}

    def op_types(self) -> dict[str, int]:
        return dict(sorted(Counter(_qualified(n) for n in self.nodes).items()))

    def fused_into(self, candidate: Candidate) -> tuple[str, ...]:
        """Op types of the runtime's nodes named after the pattern's nodes or output (ORT keeps
        the first node's name, or adds a suffix such as ``/MatMulAddFusion`` or ``_nchwc``),
        else the producer of the pattern's output."""
        keys = (*candidate.nodes, candidate.output)
        hits = [_qualified(n) for n in self.nodes
                if n.name and any(_named(n.name, k) for k in keys)]
        if hits:
            return tuple(dict.fromkeys(hits))
        maker = self.producer.get(candidate.output)
        return (_qualified(maker),) if maker is not None else ()


def _named(name: str, key: str) -> bool:
    return bool(key) and (name == key or name.startswith(tuple(key + s for s in _SUFFIXES)))


_SUFFIXES = ("/", "_nchwc", "_token_")


def _qualified(node: Any) -> str:
    short = node.domain.replace("com.microsoft", "ms") if node.domain else ""
    return f"{short}:{node.op_type}" if short else node.op_type


def _judge(candidate: Candidate, optimized: _Optimized) -> Finding:
    """Blocked first: a tensor something else still reads cannot have been fused away, so if
    it is gone the runtime only renamed it (layout transforms do)."""
    if candidate.blocked:
        return Finding(candidate=candidate, status="blocked", reason=candidate.blocked)
    gone = [t for t in candidate.internal if t not in optimized.tensors]
    if gone and len(gone) == len(candidate.internal):
        return Finding(candidate=candidate, status="fused",
                       fused_into=optimized.fused_into(candidate))
    if gone:
        kept = [t for t in candidate.internal if t not in gone]
        return Finding(candidate=candidate, status="partial",
                       fused_into=optimized.fused_into(candidate),
                       reason=f"kept {len(kept)} of {len(candidate.internal)} intermediate "
                              f"tensors (e.g. {kept[0]!r}): only part of the pattern was merged")
    return Finding(candidate=candidate, status="not fused")


def _explain(finding: Finding, all_findings: list[Finding], runtime: str,
             info: GraphInfo) -> Finding:
    if finding.status not in ("not fused", "partial"):
        return finding
    reason = _taken(finding, all_findings) or _rule(finding.candidate, runtime, info)
    if finding.status == "partial":
        reason = f"{finding.reason}; {reason}" if reason else finding.reason
    return Finding(candidate=finding.candidate, status=finding.status,
                   fused_into=finding.fused_into, reason=reason or _UNKNOWN)


_UNKNOWN = ("the runtime kept the nodes apart; the graph does not show why (a kernel constraint "
            "such as a shape, an attribute or the data type is likely)")


def _taken(finding: Finding, all_findings: list[Finding]) -> str:
    """Another pattern that fired and shares a node with this one took that node first."""
    mine = set(finding.candidate.nodes)
    for other in all_findings:
        if other is not finding and other.status == "fused" and mine & set(other.candidate.nodes):
            shared = sorted(mine & set(other.candidate.nodes))[0]
            return f"node {shared!r} was fused into {other.candidate.pattern} instead"
    return ""


# What ONNX Runtime's CPU fusions accept (onnxruntime/core/optimizer, checked on 1.2x/1.3x): the
# runtime-specific knowledge used only to explain a candidate that did not fire.
_ORT_CONV_ACTS = {"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"}
_ORT_GEMM_ACTS = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Elu", "Selu",
                  "Softplus", "Softsign", "ThresholdedRelu"}
_ORT_QDQ_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool",
                "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Softmax", "Resize",
                "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Split",
                "Where", "Pad", "Relu", "Clip", "InstanceNormalization", "ArgMax"}
_ORT_GELU_FORMS = {"x*(1+erf)*0.5", "(x*0.5)*(1+erf)"}


def _ort_rule(candidate: Candidate, info: GraphInfo) -> str:
    kind = candidate.kind
    if kind == "qdq":
        op = candidate.pattern.removeprefix("QDQ ")
        return "" if op in _ORT_QDQ_OPS else (
            f"ONNX Runtime has no integer kernel for {op}; it runs in float between "
            "DequantizeLinear and QuantizeLinear")
    if kind == "matmul_add_act":
        return _ort_dynamic_matmul(candidate, info) or _activation_rule(candidate, _ORT_GEMM_ACTS)
    if kind in ("conv_act", "conv_bn_act"):
        return _activation_rule(candidate, _ORT_CONV_ACTS)
    if kind == "gemm_act":
        return _activation_rule(candidate, _ORT_GEMM_ACTS)
    if kind in ("gelu", "bias_gelu") and candidate.variant not in _ORT_GELU_FORMS:
        return (f"ONNX Runtime's GeluFusion matches {' and '.join(sorted(_ORT_GELU_FORMS))}; "
                f"this graph computes {candidate.variant}, so it stays 5 kernels (re-export with "
                "the Gelu op, opset 20, or with x * 0.5 first)")
    return ""


def _activation_rule(candidate: Candidate, accepted: set[str]) -> str:
    if candidate.activation is None or candidate.activation in accepted:
        return ""
    head = candidate.pattern.split("+")[0]
    return (f"ONNX Runtime fuses {head} with {', '.join(sorted(accepted))} (its x86 NCHWc path "
            f"also takes HardSwish); {candidate.activation} runs as its own kernel")


def _ort_dynamic_matmul(candidate: Candidate, info: GraphInfo) -> str:
    node = next((n for n in info.nodes if n.name == candidate.nodes[0]), None)
    tensor = info.tensor(node.inputs[0]) if node else None
    if tensor is None or tensor.shape is None or len(tensor.shape) <= 2:
        return ""
    if tensor.name in info.declared_static:
        return ""
    return (f"ONNX Runtime fuses MatMul+Add into Gemm for rank > 2 inputs only with static "
            f"shapes; {tensor.name!r} is dynamic in the model (fix the shapes at export, or with "
            "onnxruntime.tools.make_dynamic_shape_fixed)")


_RULES: dict[str, Callable[[Candidate, GraphInfo], str]] = {"onnxruntime": _ort_rule}


def _rule(candidate: Candidate, runtime: str, info: GraphInfo) -> str:
    rule = _RULES.get(runtime)
    return rule(candidate, info) if rule else ""
