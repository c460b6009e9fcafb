"""The ranking check: ground truth at widths where single-layer changes can be resolved."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.demo import asset_path
from edgetune.errors import ConfigError
from edgetune.optimize.ranking import RankingConfig, mcnemar_p, ranking_check
from edgetune.transforms.rounding import symmetric_per_channel


def test_mcnemar_p_matches_the_exact_binomial() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_p(3, 7) == pytest.approx(mcnemar_p(7, 3))
    assert mcnemar_p(5, 5) == pytest.approx(1.0)


def test_symmetric_rounding_has_2_to_the_bits_minus_1_levels_per_channel() -> None:
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    q = symmetric_per_channel(w, 0, 2)
    for c in range(4):
        scale = np.abs(w[c]).max()
        assert set(np.round(np.unique(q[c]) / scale, 6)) <= {-1.0, 0.0, 1.0}
    assert np.allclose(np.abs(q).reshape(4, -1).max(axis=1), np.abs(w).reshape(4, -1).max(axis=1), rtol=1e-6)
    assert np.abs(symmetric_per_channel(w, 0, 8) - w).max() < np.abs(q - w).max() / 50


def test_bad_widths_are_refused_with_the_allowed_range() -> None:
    with pytest.raises(ConfigError, match="from 2 to 8"):
        RankingConfig(bits=(1,))


def test_proxies_rank_the_demo_layers_like_their_measured_2_bit_drops() -> None:
    """On the real demo CNN: 2-bit drops are large enough to resolve, and the end-to-end
    output noise orders them (the full check with 1,500 images gives +0.87, see the bench)."""
    check = ranking_check(asset_path("model_fp32.onnx"), RankingConfig(bits=(2,), eval_limit=600),
                          data=asset_path("calib.npz"), eval_data=asset_path("eval.npz"))
    two = check.correlations["2-bit"]
    assert two["n"] == 12 and check.samples == 600
    assert two["resolved"] >= 3
    assert two["output_noise"] > 0.6
    worst = max(check.pairs, key=lambda p: p.metric_drop)
    assert worst.layer == max(check.pairs, key=lambda p: p.output_noise).layer
    assert worst.p_value is not None and worst.p_value < 1e-6
    assert check.to_dict()["pairs"][0]["bits"] == 2
