"""The mixed-precision integer program: known optima, brute force, transitions, pruning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgetune.errors import ConfigError
from edgetune.optimize.solver import Edge, Option, Problem, brute_force, prune, solve

F, Q = "float", "u8"


def _opts(*pairs: tuple[float, float], kind: str = F) -> list[Option]:
    return [Option(cost=c, noise=n, kind=kind) for c, n in pairs]


def test_knapsack_known_optimum() -> None:
    # three layers: (cost, noise) for float, int8, int4; budget allows exactly two int4 layers
    layers = [_opts((4, 0.0), (1, 0.01), (0.5, 0.1)) for _ in range(3)]
    sol = solve(Problem(options=layers, budget=0.21))
    assert sol is not None and sol.optimal
    assert sorted(sol.picks) == [1, 2, 2]
    assert sol.cost == pytest.approx(2.0) and sol.noise == pytest.approx(0.21)


def test_zero_budget_keeps_noiseless_options() -> None:
    layers = [_opts((4, 0.0), (1, 0.01)), _opts((2, 0.0), (0.1, 1e-9))]
    sol = solve(Problem(options=layers, budget=0.0))
    assert sol is not None and sol.picks == (0, 0)


def test_infinite_budget_takes_the_cheapest() -> None:
    layers = [_opts((4, 0.0), (1, 0.3), (2, 0.1)), _opts((3, 0.0), (0.2, 5.0))]
    sol = solve(Problem(options=layers, budget=math.inf))
    assert sol is not None and sol.picks == (1, 1)


def test_infeasible_budget_returns_none() -> None:
    layers = [_opts((1, 0.5), (2, 0.4))]
    assert solve(Problem(options=layers, budget=0.1)) is None
    assert brute_force(Problem(options=layers, budget=0.1)) is None


def test_transition_penalty_changes_the_choice() -> None:
    # int8 is cheaper per layer, but switching precision between the layers costs 5
    a = [Option(cost=3, noise=0.0, kind=F), Option(cost=1, noise=0.01, kind=Q)]
    b = [Option(cost=3, noise=0.0, kind=F), Option(cost=2.5, noise=0.5, kind=Q)]
    edge = [Edge(a=0, b=1, penalty=5.0)]
    cheap_mixed = solve(Problem(options=[a, b], budget=0.1))
    with_edge = solve(Problem(options=[a, b], budget=0.1, edges=edge))
    assert cheap_mixed is not None and cheap_mixed.picks == (1, 0)
    assert with_edge is not None and with_edge.picks == (0, 0) and with_edge.cost == pytest.approx(6.0)
    both_int8 = solve(Problem(options=[a, b], budget=1.0, edges=edge))
    assert both_int8 is not None and both_int8.picks == (1, 1) and both_int8.cost == pytest.approx(3.5)


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5))
    options = [[Option(cost=float(rng.integers(1, 30)), noise=float(rng.random()),
                       kind=str(rng.choice([F, Q, "s8"]))) for _ in range(int(rng.integers(1, 4)))]
               for _ in range(n)]
    edges = [Edge(a=i, b=i + 1, penalty=float(rng.integers(0, 6))) for i in range(n - 1) if rng.random() < 0.7]
    problem = Problem(options=options, budget=float(rng.random() * n * 0.6), edges=edges)
    got, want = solve(problem), brute_force(problem)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert got.cost == pytest.approx(want.cost)
        assert got.noise <= problem.budget + 1e-9


def test_prune_keeps_only_undominated_options_per_kind() -> None:
    opts = [Option(cost=4, noise=0.0), Option(cost=2, noise=0.1), Option(cost=3, noise=0.2),
            Option(cost=1, noise=0.3), Option(cost=5, noise=0.0, kind=Q)]
    assert prune(opts) == [0, 1, 3, 4]


def test_problem_validation() -> None:
    with pytest.raises(ConfigError, match="at least one option"):
        Problem(options=[[]], budget=1.0)
    with pytest.raises(ConfigError, match="outside"):
        Problem(options=[_opts((1, 0))], budget=1.0, edges=[Edge(a=0, b=3, penalty=1)])


def test_static_noise_scale_puts_the_excess_drop_on_the_static_layers() -> None:
    from edgetune.optimize.search import static_noise_scale

    # all dynamic: drop 0.5 per unit of noise; the mixed plan predicted 0.01 (0.004 of it
    # static) but dropped as much as 0.016 of noise would: static was (0.016 - 0.006) / 0.004
    scale = static_noise_scale(mixed=(0.01, 0.008), static_noise=0.004, dynamic=(0.01, 0.005), gamma=1.0)
    assert scale == pytest.approx(2.5)
    # label metrics: drop grows with the square root of the noise
    scale = static_noise_scale(mixed=(0.01, 0.2), static_noise=0.005, dynamic=(0.01, 0.1), gamma=0.5)
    assert scale == pytest.approx((0.04 - 0.005) / 0.005)
    assert static_noise_scale(mixed=(0.01, 0.0), static_noise=0.004, dynamic=(0.01, 0.005), gamma=1.0) is None
