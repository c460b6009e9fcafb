"""Offset planning for an activation arena: the dynamic storage allocation problem.

Each buffer has a size and a lifetime ``[start, end]`` in execution steps (both ends included);
two buffers whose lifetimes intersect must not overlap in memory. The arena is the highest
``offset + size``. No plan can be smaller than the peak of bytes live at one step (the lower
bound), and finding the best plan is NP-hard, so:

* ``greedy_by_size`` is the reference heuristic of Pisarchyk & Lee (2020, "Efficient Memory
  Management for Deep Neural Net Inference"): largest buffer first, each into the smallest gap
  left between the buffers it conflicts with (best fit), else on top.
* ``greedy_by_breadth`` (same paper, in a live-set form): buffers of the busiest steps first.
* ``best`` runs a portfolio of orderings and two placement rules, then a local search over the
  ordering (seeded, so the result repeats), then, for small problems, an exact mixed-integer
  program (scipy's HiGHS) that either improves the plan, proves it optimal, or runs out of
  time. It starts from greedy by size, so it is never worse.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce

__all__ = ["Item", "Outcome", "arena_size", "conflicts", "live_bytes", "overlapping_pairs", "solve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    size: int
    start: int
    end: int

    @property
    def duration(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, kw_only=True)
class Outcome:
    offsets: list[int]
    arena: int
    method: str
    tried: dict[str, int] = field(default_factory=dict)
    """Arena bytes reached by each method tried, in the order they ran."""
    optimal: bool = False
    """True when the arena equals the lower bound or the exact solver proved it minimal."""


Order = list[int]
Placer = Callable[[list[tuple[int, int]], int], int]


def conflicts(items: Sequence[Item]) -> list[list[int]]:
    """For each item, the items whose lifetimes intersect its own (a sweep over start times)."""
    result: list[list[int]] = [[] for _ in items]
    active: list[int] = []
    for i in sorted(range(len(items)), key=lambda k: items[k].start):
        start = items[i].start
        active = [j for j in active if items[j].end >= start]
        for j in active:
            result[i].append(j)
            result[j].append(i)
        active.append(i)
    return result


def live_bytes(items: Sequence[Item], steps: int) -> list[int]:
    """Bytes live at each step: the lower bound is the maximum."""
    delta = [0] * (steps + 1)
    for item in items:
        delta[item.start] += item.size
        delta[item.end + 1] -= item.size
    live, total = [], 0
    for step in range(steps):
        total += delta[step]
        live.append(total)
    return live


def arena_size(items: Sequence[Item], offsets: Sequence[int]) -> int:
    return max((o + it.size for it, o in zip(items, offsets, strict=True)), default=0)


def overlapping_pairs(items: Sequence[Item], offsets: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs live at the same time whose byte ranges overlap: a valid plan has none."""
    bad = []
    for i, others in enumerate(conflicts(items)):
        for j in others:
            if i < j and _overlap(offsets[i], items[i].size, offsets[j], items[j].size):
                bad.append((i, j))
    return bad


def _overlap(a: int, a_size: int, b: int, b_size: int) -> bool:
    return a < b + b_size and b < a + a_size


# -- placement ---------------------------------------------------------------------------------

def best_fit(placed: list[tuple[int, int]], size: int) -> int:
    """Offset of the smallest gap between conflicting buffers that holds ``size``, else the top."""
    top, best, best_gap = 0, -1, math.inf
    for offset, length in placed:
        gap = offset - top
        if size <= gap < best_gap:
            best, best_gap = top, gap
        top = max(top, offset + length)
    return best if best >= 0 else top


def first_fit(placed: list[tuple[int, int]], size: int) -> int:
    """Offset of the lowest gap that holds ``size``, else the top."""
    top = 0
    for offset, length in placed:
        if offset - top >= size:
            return top
        top = max(top, offset + length)
    return top


def place(items: Sequence[Item], order: Order, conf: list[list[int]], placer: Placer,
          keep: tuple[list[int], int] | None = None) -> list[int]:
    """Place items one by one in ``order``, each against the already placed ones it conflicts
    with. ``keep=(offsets, k)`` reuses a previous plan's offsets for ``order[:k]``: placement
    depends only on the items placed before, so an unchanged prefix places the same way."""
    offsets = [-1] * len(items)
    first = 0
    if keep is not None:
        previous, first = keep
        for i in order[:first]:
            offsets[i] = previous[i]
    for i in order[first:]:
        placed = sorted((offsets[j], items[j].size) for j in conf[i] if offsets[j] >= 0)
        offsets[i] = placer(placed, items[i].size)
    return offsets


# -- orderings ---------------------------------------------------------------------------------

def by_size(items: Sequence[Item]) -> Order:
    return sorted(range(len(items)),
                  key=lambda i: (-items[i].size, -items[i].duration, items[i].start))


def by_breadth(items: Sequence[Item], steps: int) -> Order:
    """Items of the step with the most live bytes first, largest first within a step."""
    live = live_bytes(items, steps)
    order: Order = []
    seen: set[int] = set()
    by_step: list[list[int]] = [[] for _ in range(steps)]
    for i, item in enumerate(items):
        for step in range(item.start, item.end + 1):
            by_step[step].append(i)
    for step in sorted(range(steps), key=lambda s: -live[s]):
        for i in sorted(by_step[step], key=lambda k: -items[k].size):
            if i not in seen:
                seen.add(i)
                order.append(i)
    return order


def _orderings(items: Sequence[Item], steps: int, conf: list[list[int]]) -> dict[str, Order]:
    n = range(len(items))
    weight = [items[i].size + sum(items[j].size for j in conf[i]) for i in n]
    return {
        "size": by_size(items),
        "breadth": by_breadth(items, steps),
        "area": sorted(n, key=lambda i: (-items[i].size * items[i].duration, -items[i].size)),
        "duration": sorted(n, key=lambda i: (-items[i].duration, -items[i].size)),
        "conflict": sorted(n, key=lambda i: (-weight[i], -items[i].size)),
        "start": sorted(n, key=lambda i: (items[i].start, -items[i].size)),
    }


# -- the solver --------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SearchBudget:
    iterations: int = 2000
    work: int = 20_000_000
    """Cap on conflict checks in the local search (deterministic, unlike a time limit): dense
    problems with hundreds of buffers get fewer iterations so that a plan takes seconds."""
    exact_max_items: int = 60
    exact_time_limit_s: float = 10.0
    seed: int = 0


def solve(items: Sequence[Item], steps: int, method: str,
          budget: SearchBudget | None = None) -> Outcome:
    """Plan offsets with ``method``: ``naive``, ``greedy-size``, ``greedy-breadth`` or ``best``."""
    budget = budget or SearchBudget()
    lower = max(live_bytes(items, steps), default=0)
    if method == "naive":
        offsets = _naive(items)
        return Outcome(offsets=offsets, arena=arena_size(items, offsets), method=method)
    conf = conflicts(items)
    if method == "greedy-size":
        return _single(items, by_size(items), conf, method, lower)
    if method == "greedy-breadth":
        return _single(items, by_breadth(items, steps), conf, method, lower)
    return _best(items, steps, conf, lower, budget)


def _naive(items: Sequence[Item]) -> list[int]:
    offsets, top = [], 0
    for item in items:
        offsets.append(top)
        top += item.size
    return offsets


def _single(items: Sequence[Item], order: Order, conf: list[list[int]], method: str,
            lower: int) -> Outcome:
    offsets = place(items, order, conf, best_fit)
    arena = arena_size(items, offsets)
    return Outcome(offsets=offsets, arena=arena, method=method, tried={method: arena},
                   optimal=arena == lower)


@dataclass
class _Best:
    order: Order
    offsets: list[int]
    arena: int
    method: str
    placer: Placer
    tried: dict[str, int]

    def offer(self, method: str, order: Order, offsets: list[int], arena: int,
              placer: Placer) -> None:
        self.tried[method] = min(arena, self.tried.get(method, arena))
        if arena < self.arena:
            self.order, self.offsets, self.arena, self.method = order, offsets, arena, method
            self.placer = placer


def _best(items: Sequence[Item], steps: int, conf: list[list[int]], lower: int,
          budget: SearchBudget) -> Outcome:
    best = _portfolio(items, steps, conf)
    if best.arena > lower:
        _local_search(items, conf, lower, best, budget)
    proven = best.arena == lower
    if not proven and 0 < len(items) <= budget.exact_max_items:
        proven = _exact_step(items, conf, lower, best, budget)
    return Outcome(offsets=best.offsets, arena=best.arena, method=best.method, tried=best.tried,
                   optimal=proven)


def _portfolio(items: Sequence[Item], steps: int, conf: list[list[int]]) -> _Best:
    start = by_size(items)
    offsets = place(items, start, conf, best_fit)
    best = _Best(start, offsets, arena_size(items, offsets), "greedy-size", best_fit, {})
    best.tried["greedy-size"] = best.arena
    for name, order in _orderings(items, steps, conf).items():
        for rule, placer in (("best-fit", best_fit), ("first-fit", first_fit)):
            offsets = place(items, order, conf, placer)
            best.offer(f"{name}/{rule}", order, offsets, arena_size(items, offsets), placer)
    return best


def _local_search(items: Sequence[Item], conf: list[list[int]], lower: int, best: _Best,
                  budget: SearchBudget) -> None:
    """Move items that reach the top of the arena earlier in the order; keep non-worse orders."""
    rng = random.Random(budget.seed)
    order, offsets, arena = list(best.order), best.offsets, best.arena
    per_pass = len(items) + sum(len(c) for c in conf)
    for _ in range(min(budget.iterations, budget.work // per_pass)):
        if arena == lower:
            break
        candidate, changed = _perturb(order, items, offsets, arena, rng)
        new_offsets = place(items, candidate, conf, best.placer, keep=(offsets, changed))
        new_arena = arena_size(items, new_offsets)
        if new_arena <= arena:
            order, offsets, arena = candidate, new_offsets, new_arena
    best.offer("search", order, offsets, arena, best.placer)


def _perturb(order: Order, items: Sequence[Item], offsets: list[int], arena: int,
             rng: random.Random) -> tuple[Order, int]:
    """A neighbouring order and the first position where it differs."""
    candidate = list(order)
    if rng.random() < 0.6:
        top = [i for i in order if offsets[i] + items[i].size == arena]
        i = rng.choice(top)
        position = candidate.index(i)
        target = rng.randrange(position + 1)
        candidate.pop(position)
        candidate.insert(target, i)
        return candidate, target
    a, b = rng.randrange(len(order)), rng.randrange(len(order))
    candidate[a], candidate[b] = candidate[b], candidate[a]
    return candidate, min(a, b)


# -- exact -------------------------------------------------------------------------------------

def _exact_step(items: Sequence[Item], conf: list[list[int]], lower: int, best: _Best,
                budget: SearchBudget) -> bool:
    """Try the exact program; adopt a better plan; True when the plan is proven minimal."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        log.info("scipy is not installed; skipping the exact arena planner")
        return False
    result = _exact(items, conf, lower, best.arena, budget.exact_time_limit_s)
    if result is None:
        return False
    offsets, proven = result
    if offsets is None:
        return proven
    if overlapping_pairs(items, offsets):
        log.warning("exact arena planner returned an invalid plan; keeping the heuristic plan")
        return False
    arena = arena_size(items, offsets)
    best.offer("exact", best.order, offsets, arena, best.placer)
    return proven and best.arena == arena


def _exact(items: Sequence[Item], conf: list[list[int]], lower: int, upper: int,
           time_limit: float) -> tuple[list[int] | None, bool] | None:
    """Minimize the arena strictly below ``upper``; ``(offsets or None, proven optimal)``."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    unit = reduce(math.gcd, (it.size for it in items))
    sizes = [it.size // unit for it in items]
    pairs = [(i, j) for i in range(len(items)) for j in conf[i] if i < j]
    n, m = len(items), len(pairs)
    big = -(-upper // unit)
    rows, upper_b = _exact_rows(sizes, pairs, n, big)
    c = np.zeros(n + 1 + m)
    c[n] = 1.0
    lo = np.zeros(n + 1 + m)
    hi = np.concatenate([[big - s for s in sizes], [big - 1], np.ones(m)])
    lo[n] = math.ceil(lower / unit)
    if lo[n] > hi[n]:
        return None, True
    integrality = np.concatenate([np.zeros(n + 1), np.ones(m)])
    if m:
        lo[n + 1] = hi[n + 1] = 1.0  # mirror symmetry: fix the order of one pair
    res = milp(c, constraints=LinearConstraint(rows, -np.inf, upper_b), bounds=Bounds(lo, hi),
               integrality=integrality, options={"time_limit": time_limit, "disp": False})
    log.info("exact arena planner: %s", res.message)
    if res.status == 2:  # infeasible: nothing beats the heuristic's plan
        return None, True
    if res.x is None:
        return None, False
    return _longest_path(items, pairs, res.x, n), res.status == 0


def _exact_rows(sizes: list[int], pairs: list[tuple[int, int]], n: int, big: int) -> tuple[object,
                object]:
    """Constraint rows for non-overlap (big-M on the pair's order) and the arena's top."""
    import numpy as np
    from scipy.sparse import lil_matrix

    m = len(pairs)
    rows = lil_matrix((2 * m + n, n + 1 + m))
    bound = np.zeros(2 * m + n)
    for k, (i, j) in enumerate(pairs):
        # z = 1: i below j (o_i + s_i <= o_j); z = 0: j below i.
        rows[2 * k, i], rows[2 * k, j], rows[2 * k, n + 1 + k] = 1, -1, big
        bound[2 * k] = big - sizes[i]
        rows[2 * k + 1, j], rows[2 * k + 1, i], rows[2 * k + 1, n + 1 + k] = 1, -1, -big
        bound[2 * k + 1] = -sizes[j]
    for i in range(n):
        rows[2 * m + i, i], rows[2 * m + i, n] = 1, -1
        bound[2 * m + i] = -sizes[i]
    return rows.tocsr(), bound


def _longest_path(items: Sequence[Item], pairs: list[tuple[int, int]], x: Sequence[float],
                  n: int) -> list[int] | None:
    """Exact integer offsets from the solver's above/below choices (robust to its tolerances):
    each buffer sits on the highest of the buffers chosen to lie below it."""
    import heapq

    below: list[list[int]] = [[] for _ in range(n)]
    above: list[list[int]] = [[] for _ in range(n)]
    for k, (i, j) in enumerate(pairs):
        low, high = (i, j) if x[n + 1 + k] > 0.5 else (j, i)
        below[high].append(low)
        above[low].append(high)
    waiting = [len(b) for b in below]
    ready = [(x[k], k) for k in range(n) if not waiting[k]]
    heapq.heapify(ready)
    offsets, done = [0] * n, 0
    while ready:
        _, j = heapq.heappop(ready)
        offsets[j] = max((offsets[i] + items[i].size for i in below[j]), default=0)
        done += 1
        for k in above[j]:
            waiting[k] -= 1
            if not waiting[k]:
                heapq.heappush(ready, (x[k], k))
    return offsets if done == n else None
