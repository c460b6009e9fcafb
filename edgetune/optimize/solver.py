"""The exact per-layer choice: an integer linear program solved with ``scipy.optimize.milp``.

Each layer picks one option; an option has a cost (bytes, or milliseconds on the runtime), a
predicted model-output noise, and a *kind* (what its input tensor is in the graph: float,
u8, s8, u16). The program minimizes the total cost, plus a penalty on every connection
between two layers whose kinds differ (a Quantize/Dequantize pair the runtime has to run),
subject to the total noise staying within a budget::

    minimize    sum_l,o cost[l,o] x[l,o] + sum_e penalty[e] y[e]
    subject to  sum_o x[l,o] = 1                        for every layer l
                sum_l,o noise[l,o] x[l,o] <= budget
                y[e] >= |sum_{o of kind k} x[a,o] - sum_{o of kind k} x[b,o]|   for e=(a,b), all k
                x binary, 0 <= y <= 1

Options dominated within their kind (no cheaper and no quieter) are dropped first; the result
is the same, the program smaller.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgetune.errors import ConfigError, MissingExtraError

__all__ = ["Edge", "Option", "Problem", "Solution", "brute_force", "prune", "solve"]


@dataclass(frozen=True, kw_only=True)
class Option:
    cost: float
    noise: float
    kind: str = "float"


@dataclass(frozen=True, kw_only=True)
class Edge:
    """Layer ``a`` feeds layer ``b``; differing kinds cost ``penalty``."""

    a: int
    b: int
    penalty: float


@dataclass(frozen=True, kw_only=True)
class Problem:
    options: Sequence[Sequence[Option]]
    budget: float
    edges: Sequence[Edge] = ()

    def __post_init__(self) -> None:
        if any(len(o) == 0 for o in self.options):
            raise ConfigError("every layer needs at least one option; got a layer with none")
        for e in self.edges:
            if not (0 <= e.a < len(self.options) and 0 <= e.b < len(self.options)):
                raise ConfigError(f"edge {e} names a layer outside 0..{len(self.options) - 1}")


@dataclass(frozen=True, kw_only=True)
class Solution:
    picks: tuple[int, ...]
    """Index of the chosen option of every layer (into the problem's option lists)."""
    cost: float
    noise: float
    optimal: bool


def total(problem: Problem, picks: Sequence[int]) -> tuple[float, float]:
    """(objective, noise) of a pick, transition penalties included."""
    opts = [problem.options[li][p] for li, p in enumerate(picks)]
    cost = sum(o.cost for o in opts)
    cost += sum(e.penalty for e in problem.edges if opts[e.a].kind != opts[e.b].kind)
    return cost, sum(o.noise for o in opts)


def prune(options: Sequence[Option]) -> list[int]:
    """Indices of the options not dominated within their kind (cheapest first)."""
    keep = []
    by_kind: dict[str, list[int]] = {}
    for i, o in enumerate(options):
        by_kind.setdefault(o.kind, []).append(i)
    for idx in by_kind.values():
        best_noise = np.inf
        for i in sorted(idx, key=lambda j: (options[j].cost, options[j].noise)):
            if options[i].noise < best_noise:
                keep.append(i)
                best_noise = options[i].noise
    return sorted(keep)


def solve(problem: Problem, *, time_limit: float = 20.0) -> Solution | None:
    """The cheapest pick within the noise budget; ``None`` when no pick fits it."""
    try:
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix
    except ImportError:
        raise MissingExtraError("scipy", "optimize", "the mixed-precision solver") from None

    kept = [prune(opts) for opts in problem.options]
    flat = [(li, i) for li, idx in enumerate(kept) for i in idx]
    n_x, n_y = len(flat), len(problem.edges)
    kinds = sorted({problem.options[li][i].kind for li, i in flat})
    c = np.array([problem.options[li][i].cost for li, i in flat] + [e.penalty for e in problem.edges])
    rows = len(kept) + 1 + 2 * n_y * len(kinds)
    a = lil_matrix((rows, n_x + n_y))
    lo, hi = np.zeros(rows), np.zeros(rows)
    # the noise row is scaled by the budget so the solver's tolerance is relative to it
    scale = 1.0 / problem.budget if 0 < problem.budget < np.inf else 1.0
    upper = np.ones(n_x + n_y)
    for col, (li, i) in enumerate(flat):
        a[li, col] = 1.0
        a[len(kept), col] = problem.options[li][i].noise * scale
        if problem.budget <= 0 and problem.options[li][i].noise > 0:
            upper[col] = 0.0
    lo[: len(kept)] = hi[: len(kept)] = 1.0
    lo[len(kept)], hi[len(kept)] = -np.inf, problem.budget * scale
    _edge_rows(a, lo, hi, problem, flat, kinds, len(kept) + 1, n_x)
    res = milp(c, constraints=LinearConstraint(a.tocsr(), lo, hi),
               integrality=np.r_[np.ones(n_x), np.zeros(n_y)], bounds=Bounds(0, upper),
               options={"time_limit": time_limit})
    if res.x is None:
        return None
    picks = _picks(res.x[:n_x], flat, len(kept))
    cost, noise = total(problem, picks)
    return Solution(picks=picks, cost=cost, noise=noise, optimal=res.status == 0)


def _edge_rows(a: object, lo: np.ndarray, hi: np.ndarray, problem: Problem,
               flat: list[tuple[int, int]], kinds: list[str], start: int, n_x: int) -> None:
    """y_e - (A_k - B_k) >= 0 and y_e + (A_k - B_k) >= 0 for every kind k."""
    row = start
    for e_index, edge in enumerate(problem.edges):
        for kind in kinds:
            for sign in (1.0, -1.0):
                a[row, n_x + e_index] = 1.0  # type: ignore[index]
                for col, (li, i) in enumerate(flat):
                    if problem.options[li][i].kind != kind:
                        continue
                    if li == edge.a:
                        a[row, col] = -sign  # type: ignore[index]
                    elif li == edge.b:
                        a[row, col] = sign  # type: ignore[index]
                lo[row], hi[row] = 0.0, np.inf
                row += 1


def _picks(x: np.ndarray, flat: list[tuple[int, int]], layers: int) -> tuple[int, ...]:
    best: dict[int, tuple[float, int]] = {}
    for value, (li, i) in zip(x, flat, strict=True):
        if li not in best or value > best[li][0]:
            best[li] = (value, i)
    return tuple(best[li][1] for li in range(layers))


def brute_force(problem: Problem) -> Solution | None:
    """Every combination (small problems only): the reference the tests compare against."""
    best: tuple[float, float, tuple[int, ...]] | None = None
    for picks in itertools.product(*[range(len(o)) for o in problem.options]):
        cost, noise = total(problem, picks)
        if noise <= problem.budget + 1e-12 and (best is None or cost < best[0] - 1e-12):
            best = (cost, noise, tuple(picks))
    if best is None:
        return None
    return Solution(picks=best[2], cost=best[0], noise=best[1], optimal=True)
