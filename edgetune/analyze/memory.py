"""Activation memory: tensor lifetimes from the graph and an arena planned with buffer reuse.

On edge chips the activation arena, not the weights, often decides whether a model fits in RAM.
:func:`plan_memory` gives the arena a planner reaches, next to the naive sum of all activations
(no reuse at all) and the lower bound no plan can beat (the peak of bytes live at one step), so
a user sees how much is left on the table.

What the arena holds (say it, because runtimes differ): intermediate activations, plus the graph
inputs and outputs unless ``include_io=False`` (TFLite Micro keeps them in its arena; ONNX
Runtime lets the caller own them). Weights are never in it: initializers and Constant values
live in flash or in the runtime's weight memory, and so do tensors computed only from weights
and static shapes (e.g. DequantizeLinear of a weight, shape arithmetic), which runtimes fold or
fuse at load time. With ``alias_views`` (default) Reshape, Flatten, Squeeze, Unsqueeze and
Identity reuse their input's buffer, as ONNX Runtime and TFLite do. With ``fuse_qdq`` (default)
a QDQ model is planned as the integer kernels a runtime runs it with: the float tensors between
DequantizeLinear, an operator and QuantizeLinear are never materialized, the operator reads and
writes the 8-bit tensors. Steps follow the graph's node order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edgetune.analyze._arena import Item, SearchBudget, overlapping_pairs, solve
from edgetune.analyze._graphinfo import (
    GraphInfo,
    TensorInfo,
    TensorKind,
    graph_info,
    integer_kernel,
)
from edgetune.core.fileio import atomic_write_text
from edgetune.core.model import Model
from edgetune.errors import ConfigError, DataError

__all__ = [
    "PLAN_SCHEMA",
    "Buffer",
    "MemoryConfig",
    "MemoryPlan",
    "Strategy",
    "load_plan",
    "plan_memory",
    "write_plan",
]

log = logging.getLogger(__name__)

PLAN_SCHEMA = "edgetune.memory_plan/1"
_READABLE = {PLAN_SCHEMA}
_VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


class Strategy(str, Enum):
    NAIVE = "naive"
    """Every buffer its own memory: the sum of all activations."""
    GREEDY_BY_SIZE = "greedy-size"
    """Largest first, best-fitting gap (Pisarchyk & Lee 2020): the reference heuristic."""
    GREEDY_BY_BREADTH = "greedy-breadth"
    """Buffers of the busiest steps first."""
    BEST = "best"
    """Portfolio of orders and placements, local search, and an exact program for small graphs."""


@dataclass(frozen=True, kw_only=True)
class MemoryConfig:
    """How to plan the arena. Defaults suit a microcontroller-style static arena."""

    strategy: Strategy = Strategy.BEST
    alignment: int = 64
    """Every buffer starts on, and is padded to, this many bytes (a power of two)."""
    dims: Mapping[str, int] = field(default_factory=dict)
    """Values for symbolic input dimensions, e.g. ``{"seq": 128}`` (a dynamic batch defaults to 1);
    ``"input[axis]"`` names any axis, fixed ones too."""
    include_io: bool = True
    alias_views: bool = True
    fuse_qdq: bool = True
    search_iterations: int = 2000
    exact_max_buffers: int = 60
    """The exact program runs only on graphs with at most this many buffers."""
    exact_time_limit_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):
            raise ConfigError(f"The 'strategy' parameter of MemoryConfig must be one of "
                              f"{[s.value for s in Strategy]}; got {self.strategy!r}")
        if self.alignment < 1 or self.alignment & (self.alignment - 1):
            raise ConfigError("The 'alignment' parameter of MemoryConfig must be a power of two; "
                              f"got {self.alignment!r}")
        for name in ("search_iterations", "exact_max_buffers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"The {name!r} parameter of MemoryConfig must be >= 0; "
                                  f"got {getattr(self, name)!r}")
        if self.exact_time_limit_s <= 0:
            raise ConfigError("The 'exact_time_limit_s' parameter of MemoryConfig must be > 0; "
                              f"got {self.exact_time_limit_s!r}")


@dataclass(frozen=True, kw_only=True)
class Buffer:
    """One block of the arena: a tensor, or a tensor and the views that share its memory."""

    tensors: tuple[str, ...]
    size: int
    """Bytes reserved, padded to the alignment."""
    start: int
    end: int
    """First and last step (node index) the buffer is live, both included."""
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "size": self.size, "start": self.start, "end": self.end,
                "tensors": list(self.tensors)}


@dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    model_name: str
    strategy: Strategy
    method: str
    """Which method of the strategy produced the plan (e.g. ``size/best-fit``, ``exact``)."""
    buffers: tuple[Buffer, ...]
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int
    greedy_bytes: int
    """The arena greedy by size reaches, for comparison."""
    optimal: bool
    """The arena equals the lower bound, or the exact program proved it minimal."""
    peak_step: int
    live_bytes: tuple[int, ...]
    steps: tuple[str, ...]
    """Node name of each step."""
    tried: dict[str, int]
    alignment: int
    include_io: bool
    alias_views: bool
    fuse_qdq: bool
    dims: dict[str, int]
    weights_bytes: int
    constants_bytes: int
    io_bytes: int
    notes: tuple[str, ...] = ()

    @property
    def ratio_to_lower_bound(self) -> float:
        return self.arena_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0

    @property
    def peak_node(self) -> str:
        return self.steps[self.peak_step] if self.steps else ""

    def live_at(self, step: int) -> list[Buffer]:
        return [b for b in self.buffers if b.start <= step <= b.end]

    def summary(self) -> dict[str, Any]:
        """Every figure of the plan except the buffers themselves."""
        return {
            "model": self.model_name, "strategy": self.strategy.value, "method": self.method,
            "arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
            "lower_bound_bytes": self.lower_bound_bytes, "greedy_by_size_bytes": self.greedy_bytes,
            "ratio_to_lower_bound": self.ratio_to_lower_bound, "optimal": self.optimal,
            "peak_step": self.peak_step, "peak_node": self.peak_node, "buffers": len(self.buffers),
            "tried": dict(self.tried), "alignment": self.alignment, "include_io": self.include_io,
            "alias_views": self.alias_views, "fuse_qdq": self.fuse_qdq, "dims": dict(self.dims),
            "weights_bytes": self.weights_bytes, "constants_bytes": self.constants_bytes,
            "io_bytes": self.io_bytes, "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        """The summary, the live bytes per step and the offsets: what :func:`write_plan` saves."""
        return {"schema": PLAN_SCHEMA, **self.summary(), "steps": list(self.steps),
                "live_bytes": list(self.live_bytes), "plan": [b.to_dict() for b in self.buffers]}


def plan_memory(model: Model | str | Path, config: MemoryConfig | None = None, *,
                info: GraphInfo | None = None) -> MemoryPlan:
    """Plan the activation arena of ``model``; ``info`` reuses an already computed graph view."""
    from edgetune.load import load

    config = config or MemoryConfig()
    model = load(model)
    info = info or graph_info(model, config.dims)
    groups, notes = _buffer_groups(info, config)
    items = [_item(group, info, config.alignment) for group in groups]
    steps = max(len(info.nodes), 1)
    budget = SearchBudget(iterations=config.search_iterations, seed=config.seed,
                          exact_max_items=config.exact_max_buffers,
                          exact_time_limit_s=config.exact_time_limit_s)
    outcome = solve(items, steps, config.strategy.value, budget)
    _check(items, outcome.offsets, groups)
    greedy = outcome.tried.get("greedy-size") or solve(items, steps, "greedy-size").arena
    return _plan(model, info, config, groups, items, outcome, greedy, [*info.notes, *notes])


def _plan(model: Model, info: GraphInfo, config: MemoryConfig, groups: list[_Group],
          items: list[Item], outcome: Any, greedy: int, notes: list[str]) -> MemoryPlan:
    from edgetune.analyze._arena import live_bytes

    steps = max(len(info.nodes), 1)
    live = live_bytes(items, steps)
    buffers = tuple(Buffer(tensors=tuple(g.tensors), size=it.size, start=it.start, end=it.end,
                           offset=o)
                    for g, it, o in zip(groups, items, outcome.offsets, strict=True))
    io = {TensorKind.INPUT, TensorKind.OUTPUT}
    return MemoryPlan(
        model_name=model.name, strategy=config.strategy, method=outcome.method, buffers=buffers,
        arena_bytes=outcome.arena, naive_bytes=sum(_aligned(info.tensors[t].nbytes or 0,
                                                            config.alignment)
                                                   for g in groups for t in g.tensors),
        lower_bound_bytes=max(live, default=0), greedy_bytes=greedy, optimal=outcome.optimal,
        peak_step=live.index(max(live)) if live else 0, live_bytes=tuple(live),
        steps=tuple(n.name for n in info.nodes), tried=dict(outcome.tried),
        alignment=config.alignment, include_io=config.include_io, alias_views=config.alias_views,
        fuse_qdq=config.fuse_qdq,
        dims=dict(info.dims), weights_bytes=info.bytes_of({TensorKind.WEIGHT}),
        constants_bytes=info.bytes_of({TensorKind.CONSTANT}), io_bytes=info.bytes_of(io),
        notes=tuple(notes))


# -- buffers and lifetimes ---------------------------------------------------------------------

def _in_arena(tensor: TensorInfo, include_io: bool) -> bool:
    if tensor.kind is TensorKind.ACTIVATION:
        return True
    return include_io and tensor.kind in (TensorKind.INPUT, TensorKind.OUTPUT)


def _buffer_groups(info: GraphInfo, config: MemoryConfig) -> tuple[list[_Group], list[str]]:
    """Arena tensors, grouped so that views share their source's buffer."""
    notes: list[str] = []
    members = [t for t in info.tensors.values() if _in_arena(t, config.include_io)]
    unsized = [t.name for t in members if t.nbytes is None]
    if unsized:
        notes.append(f"{len(unsized)} tensors of unknown size left out of the arena "
                     f"(e.g. {unsized[0]!r})")
    names = [t.name for t in members if t.nbytes]
    parent = {name: name for name in names}
    outside: set[str] = set()
    if config.alias_views:
        _merge_views(info, parent, outside, config.include_io)
    virtual: set[str] = set()
    if config.fuse_qdq:
        _merge_qdq(info, parent, virtual)
    if virtual:
        notes.append(f"{len(virtual)} float tensors inside QDQ groups are not materialized: "
                     "planned as integer kernels that read and write the 8-bit tensors")
    groups: dict[str, _Group] = {}
    for name in names:
        root = _root(parent, name)
        if root not in outside:
            group = groups.setdefault(root, _Group())
            (group.hidden if name in virtual else group.tensors).append(name)
    return [g for g in groups.values() if g.tensors], notes


@dataclass
class _Group:
    """Tensors sharing one buffer; ``hidden`` ones are never materialized but extend its life."""

    tensors: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)


def _merge_qdq(info: GraphInfo, parent: dict[str, str], virtual: set[str]) -> None:
    """Fold the float side of each QDQ group into its 8-bit tensors (``virtual`` then holds
    the float tensors, whose lifetimes now extend the 8-bit buffers)."""
    for node in info.nodes:
        out = node.outputs[0] if node.outputs else ""
        if out not in parent:
            continue
        if node.op_type == "DequantizeLinear" and node.inputs and node.inputs[0] in parent:
            users = [info.nodes[i] for i in info.tensors[out].consumers]
            if users and all(integer_kernel(info, u) for u in users):
                virtual.add(out)
                parent[_root(parent, out)] = _root(parent, node.inputs[0])
        elif integer_kernel(info, node):
            quantized = info.nodes[info.tensors[out].consumers[0]].outputs[0]
            if quantized in parent:
                virtual.add(out)
                parent[_root(parent, out)] = _root(parent, quantized)


def _merge_views(info: GraphInfo, parent: dict[str, str], outside: set[str],
                 include_io: bool) -> None:
    """Union each view with its source; a view of caller-owned input memory leaves the arena."""
    for node in info.nodes:
        if node.op_type not in _VIEW_OPS or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        source, view = node.inputs[0], node.outputs[0]
        if view not in parent:
            continue
        if source in parent:
            parent[_root(parent, view)] = _root(parent, source)
        elif not include_io and _kind(info, source) is TensorKind.INPUT:
            outside.add(_root(parent, view))


def _kind(info: GraphInfo, name: str) -> TensorKind | None:
    tensor = info.tensors.get(name)
    return None if tensor is None else tensor.kind


def _root(parent: dict[str, str], name: str) -> str:
    while parent[name] != name:
        parent[name] = parent[parent[name]]
        name = parent[name]
    return name


def _lifetime(tensor: TensorInfo, last_step: int) -> tuple[int, int]:
    start = tensor.producer if tensor.producer is not None else 0
    end = max(tensor.consumers, default=start)
    if tensor.kind is TensorKind.OUTPUT:
        end = last_step
    return start, max(end, start)


def _item(group: _Group, info: GraphInfo, alignment: int) -> Item:
    last = max(len(info.nodes) - 1, 0)
    spans = [_lifetime(info.tensors[name], last) for name in (*group.tensors, *group.hidden)]
    size = max(info.tensors[name].nbytes or 0 for name in group.tensors)
    return Item(size=_aligned(size, alignment), start=min(s for s, _ in spans),
                end=max(e for _, e in spans))


def _aligned(nbytes: int, alignment: int) -> int:
    return -(-nbytes // alignment) * alignment


def _check(items: list[Item], offsets: list[int], groups: list[_Group]) -> None:
    """Postcondition: no two buffers live at the same step share a byte."""
    bad = overlapping_pairs(items, offsets)
    if bad:
        i, j = bad[0]
        raise RuntimeError(f"internal error: arena plan overlaps {groups[i].tensors[0]!r} and "
                           f"{groups[j].tensors[0]!r}; please report this with the model")


# -- files -------------------------------------------------------------------------------------

def write_plan(plan: MemoryPlan, path: Path | str) -> Path:
    """Save the plan (offsets of every tensor) as versioned JSON, atomically."""
    from edgetune.report.schema import jsonable

    text = json.dumps(jsonable(plan.to_dict()), indent=2, allow_nan=False)
    return atomic_write_text(Path(path), text + "\n", "memory plan")


def load_plan(path: Path | str) -> dict[str, Any]:
    """Read a saved plan back, refusing files of an unknown schema or with overlapping buffers."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read memory plan {str(path)!r}: {exc}; give a plan JSON "
                        "written by edgetune inspect --plan") from None
    if not isinstance(data, dict) or data.get("schema") not in _READABLE:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{str(path)!r} is not a memory plan this version reads (schema {got!r}, "
                        f"readable: {sorted(_READABLE)})")
    _check_loaded(data, path)
    return data


def _check_loaded(data: dict[str, Any], path: Path) -> None:
    try:
        items = [Item(int(b["size"]), int(b["start"]), int(b["end"])) for b in data["plan"]]
        offsets = [int(b["offset"]) for b in data["plan"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"memory plan {str(path)!r} is malformed ({exc!r} in 'plan'); "
                        "re-create it with edgetune inspect --plan") from None
    if overlapping_pairs(items, offsets):
        raise DataError(f"memory plan {str(path)!r} has overlapping live buffers; it was edited "
                        "or corrupted: re-create it with edgetune inspect --plan")
