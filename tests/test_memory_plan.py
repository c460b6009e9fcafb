"""Tensor lifetimes and the activation arena: no two live tensors ever share a byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetune.analyze import _arena
from edgetune.analyze._arena import Item, SearchBudget, live_bytes, overlapping_pairs, solve
from edgetune.analyze.memory import (
    MemoryConfig,
    MemoryPlan,
    Strategy,
    load_plan,
    plan_memory,
    write_plan,
)
from edgetune.core.model import Model
from edgetune.errors import ConfigError, DataError
from edgetune.testing.tiny import tiny_cnn, tiny_mlp

# -- the planner on random lifetimes (property tests) -----------------------------------------

_items = st.lists(
    st.tuples(st.integers(1, 64), st.integers(0, 15), st.integers(0, 6)).map(
        lambda t: Item(size=t[0] * 16, start=t[1], end=min(15, t[1] + t[2]))),
    min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(items=_items, method=st.sampled_from(["naive", "greedy-size", "greedy-breadth", "best"]))
def test_no_two_live_buffers_overlap(items: list[Item], method: str) -> None:
    outcome = solve(items, 16, method, SearchBudget(iterations=50, exact_time_limit_s=2.0))
    assert overlapping_pairs(items, outcome.offsets) == []
    assert all(o >= 0 for o in outcome.offsets)
    assert outcome.arena >= max(live_bytes(items, 16))


@settings(max_examples=40, deadline=None)
@given(items=_items)
def test_best_is_never_worse_than_greedy_by_size(items: list[Item]) -> None:
    greedy = solve(items, 16, "greedy-size")
    best = solve(items, 16, "best", SearchBudget(iterations=50, exact_time_limit_s=2.0))
    assert best.arena <= greedy.arena
    assert best.tried["greedy-size"] == greedy.arena


def _brute_force_conflicts(items: list[Item]) -> set[tuple[int, int]]:
    return {(i, j) for i in range(len(items)) for j in range(i + 1, len(items))
            if items[i].start <= items[j].end and items[j].start <= items[i].end}


@settings(max_examples=40, deadline=None)
@given(items=_items)
def test_conflict_sweep_matches_brute_force(items: list[Item]) -> None:
    found = {(min(i, j), max(i, j)) for i, js in enumerate(_arena.conflicts(items)) for j in js}
    assert found == _brute_force_conflicts(items)


def test_exact_program_reaches_the_bound_from_a_poor_start() -> None:
    """From the naive plan as upper bound, the exact program finds a plan at the lower bound
    (these lifetimes admit one: they are those of a chain with one long skip)."""
    pytest.importorskip("scipy")
    items = [Item(4, 0, 3), Item(2, 0, 0), Item(4, 1, 1), Item(3, 1, 2), Item(4, 2, 3),
             Item(1, 3, 3), Item(2, 0, 1)]
    lower = max(live_bytes(items, 4))
    upper = sum(i.size for i in items)
    offsets, proven = _arena._exact(items, _arena.conflicts(items), lower, upper, 10.0)
    assert offsets is not None and proven
    assert overlapping_pairs(items, offsets) == []
    assert _arena.arena_size(items, offsets) == lower


def test_exact_program_proves_a_plan_optimal() -> None:
    """With the bound itself as the upper limit, nothing strictly better exists: proven."""
    pytest.importorskip("scipy")
    items = [Item(2, 0, 1), Item(2, 1, 2), Item(1, 0, 0)]
    lower = max(live_bytes(items, 3))
    assert _arena._exact(items, _arena.conflicts(items), lower, lower, 5.0) == (None, True)


# -- lifetimes from real graphs ----------------------------------------------------------------

def test_tiny_mlp_lifetimes_by_hand() -> None:
    plan = plan_memory(tiny_mlp())
    spans = {b.tensors: (b.start, b.end, b.size) for b in plan.buffers}
    assert spans == {("x",): (0, 0, 64), ("h0",): (0, 1, 128), ("h1",): (1, 2, 128),
                     ("h2",): (2, 3, 128), ("o0",): (3, 4, 64), ("y",): (4, 4, 64)}
    assert plan.naive_bytes == 576
    assert plan.lower_bound_bytes == plan.arena_bytes == 256
    assert plan.optimal and plan.weights_bytes == 4 * (16 * 32 + 32 + 32 * 4 + 4)
    assert any("assumed 1" in note for note in plan.notes)


def test_views_share_their_source_and_io_can_be_left_out() -> None:
    with_views = plan_memory(tiny_cnn())
    assert ("p1", "f1") in [b.tensors for b in with_views.buffers]
    no_io = plan_memory(tiny_cnn(), MemoryConfig(include_io=False, alias_views=False))
    names = {t for b in no_io.buffers for t in b.tensors}
    assert "input" not in names and "logits" not in names and {"p1", "f1"} <= names


def _residual_unet(width: int = 4, size: int = 16) -> Model:
    """Conv stages whose early outputs wait for late Concats (long skips), plus a residual."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits, nodes = [], []

    def conv(x: str, cin: int, cout: int, name: str, stride: int = 1) -> str:
        weight = rng.normal(0, .1, (cout, cin, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"{name}.w"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [name], name=name, pads=[1] * 4,
                                      strides=[stride] * 2))
        return name

    e1 = conv("x", 3, width, "e1")
    e2 = conv(e1, width, 2 * width, "e2", 2)
    b = conv(e2, 2 * width, 2 * width, "b")
    nodes.append(helper.make_node("Add", [b, e2], ["res"], name="res"))
    nodes.append(helper.make_node("Resize", ["res", "", "scales"], ["up"], name="up",
                                  mode="nearest"))
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes.append(helper.make_node("Concat", ["up", e1], ["cat"], name="cat", axis=1))
    conv("cat", 3 * width, 2, "y")
    graph = helper.make_graph(nodes, "unet", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, size, size])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 2, size, size])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto=onnx.shape_inference.infer_shapes(proto), name="unet")


def _graph_lifetimes(model: Model) -> dict[str, tuple[int, int]]:
    """Lifetimes read straight off the node list: an independent check of the planner's."""
    graph = model.proto.graph
    weights = {i.name for i in graph.initializer}
    span: dict[str, list[int]] = {i.name: [0, 0] for i in graph.input if i.name not in weights}
    for step, node in enumerate(graph.node):
        for name in node.input:
            if name in span:
                span[name][1] = step
        for name in node.output:
            span[name] = [step, step]
    for output in graph.output:
        span[output.name][1] = len(graph.node) - 1
    return {k: (v[0], v[1]) for k, v in span.items()}


@pytest.mark.parametrize("strategy", list(Strategy))
def test_no_tensors_live_together_overlap_in_a_real_plan(strategy: Strategy) -> None:
    model = _residual_unet()
    plan = plan_memory(model, MemoryConfig(strategy=strategy, alias_views=False))
    where = {t: (b.offset, b.size) for b in plan.buffers for t in b.tensors}
    life = _graph_lifetimes(model)
    assert set(where) == set(life)
    names = sorted(where)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            live_together = life[a][0] <= life[b][1] and life[b][0] <= life[a][1]
            (oa, sa), (ob, sb) = where[a], where[b]
            assert not (live_together and oa < ob + sb and ob < oa + sa), (a, b)
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes


def _resnet_stem_and_block(width: int = 8, size: int = 32) -> Model:
    """Stem (conv-bn-relu, stride 2) and one basic residual block, as exporters write them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits: list[Any] = []
    nodes: list[Any] = []

    def op(kind: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def param(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(x: str, cin: int, name: str, stride: int = 1) -> str:
        w = param(f"{name}.w", rng.normal(0, .1, (width, cin, 3, 3)))
        y = op("Conv", [x, w], name, pads=[1] * 4, strides=[stride] * 2)
        bn = [param(f"{name}.{k}", rng.uniform(.5, 1.5, width)) for k in ("g", "b", "m", "v")]
        return op("BatchNormalization", [y, *bn], f"{name}.bn")

    x = op("Relu", [conv_bn("x", 3, "stem", 2)], "stem.relu")
    y = conv_bn(op("Relu", [conv_bn(x, width, "c1")], "c1.relu"), width, "c2")
    op("Relu", [op("Add", [y, x], "add")], "y")
    side = size // 2
    graph = helper.make_graph(nodes, "resnet_block", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, size, size])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, width, side, side])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto=onnx.shape_inference.infer_shapes(proto), name="resnet_block")


def test_best_closes_the_gap_greedy_by_size_leaves() -> None:
    """The 12 KiB input goes first under greedy by size and leaves a hole the 8 KiB
    activations cannot use: 28 KiB against a bound of 24 KiB (3 activations of 8 KiB live
    together). A different order reaches the bound."""
    model = _resnet_stem_and_block()
    best = plan_memory(model)
    greedy = plan_memory(model, MemoryConfig(strategy=Strategy.GREEDY_BY_SIZE))
    assert best.lower_bound_bytes == 3 * 8 * 1024
    assert greedy.arena_bytes == 28 * 1024 == best.greedy_bytes
    assert best.arena_bytes == best.lower_bound_bytes and best.optimal
    assert best.method != "greedy-size"


def test_symbolic_dims_must_be_given_and_must_exist() -> None:
    from onnx import helper

    proto = tiny_mlp().copy_proto()
    proto.graph.input[0].type.tensor_type.shape.dim[1].Clear()
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    model = tiny_mlp().with_proto(proto)
    with pytest.raises(ConfigError, match="--dim features=128"):
        plan_memory(model)
    assert plan_memory(model, MemoryConfig(dims={"features": 16})).arena_bytes == 256
    with pytest.raises(ConfigError, match="'feature' matches no input dimension"):
        plan_memory(model, MemoryConfig(dims={"feature": 16}))
    assert helper is not None


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        MemoryConfig(alignment=48)
    with pytest.raises(ConfigError, match="'search_iterations'"):
        MemoryConfig(search_iterations=-1)


# -- the plan on disk --------------------------------------------------------------------------

def test_plan_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    plan: MemoryPlan = plan_memory(_residual_unet())
    path = write_plan(plan, tmp_path / "plan.json")
    data = load_plan(path)
    assert data["arena_bytes"] == plan.arena_bytes
    assert [b["offset"] for b in data["plan"]] == [b.offset for b in plan.buffers]
    broken: dict[str, Any] = json.loads(path.read_text())
    broken["plan"][1]["offset"] = broken["plan"][0]["offset"]
    broken["plan"][1].update(start=broken["plan"][0]["start"], end=broken["plan"][0]["end"])
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match="overlapping"):
        load_plan(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/9"}))
    with pytest.raises(DataError, match="not a memory plan"):
        load_plan(tmp_path / "other.json")


def _qdq_conv() -> Model:
    """x -> Q -> DQ -> Conv (DQ'd int8 weights) -> Q -> DQ -> z, as quantizers write it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.integers(-9, 9, (4, 3, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.float32(0.01), "ws"),
             numpy_helper.from_array(np.int8(0), "wz"),
             numpy_helper.from_array(np.float32(0.05), "s"),
             numpy_helper.from_array(np.uint8(128), "zp")]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
             n("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
             n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w"),
             n("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1] * 4),
             n("QuantizeLinear", ["c", "s", "zp"], ["cq"], name="q_out"),
             n("DequantizeLinear", ["cq", "s", "zp"], ["z"], name="dq_out")]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "qdq", [value("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [value("z", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(proto=onnx.shape_inference.infer_shapes(proto), name="qdq")


def test_qdq_groups_are_planned_as_integer_kernels() -> None:
    """The float tensors inside the group (xd, c) never exist: the kernel reads xq (int8,
    kept alive until the Conv) and writes cq. The weight's DequantizeLinear is folded."""
    fused = plan_memory(_qdq_conv(), MemoryConfig(alignment=1))
    spans = {b.tensors: (b.start, b.end, b.size) for b in fused.buffers}
    assert spans == {("x",): (0, 0, 3 * 256 * 4), ("xq",): (0, 3, 3 * 256),
                     ("cq",): (3, 5, 4 * 256), ("z",): (5, 5, 4 * 256 * 4)}
    plain = plan_memory(_qdq_conv(), MemoryConfig(alignment=1, fuse_qdq=False))
    assert {t for b in plain.buffers for t in b.tensors} == {"x", "xq", "xd", "c", "cq", "z"}
    assert fused.arena_bytes < plain.arena_bytes and fused.naive_bytes < plain.naive_bytes
    assert fused.constants_bytes == 4 * 3 * 3 * 3 * 4
