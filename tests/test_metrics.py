from __future__ import annotations

import numpy as np
import pytest

from edgetune.core.metrics import RunOutputs, get_metric
from edgetune.errors import DataError, MetricError


def _outputs(rows: list[list[float]], labels: list[int] | None = None) -> RunOutputs:
    per_sample = [[np.asarray([r], dtype=np.float32)] for r in rows]
    return RunOutputs(
        names=["y"], per_sample=per_sample, labels=None if labels is None else np.asarray(labels)
    )


def test_top1_is_a_fraction() -> None:
    out = _outputs([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], labels=[1, 0, 0, 0])
    assert get_metric("top1")(out, None).value == pytest.approx(0.75)


def test_top1_without_labels_says_how_to_fix() -> None:
    with pytest.raises(DataError, match="fidelity"):
        get_metric("top1")(_outputs([[1.0, 0.0]]), None)


def test_fidelity_against_reference() -> None:
    ref = _outputs([[1.0, 0.0], [0.0, 2.0]])
    same = get_metric("fidelity")(ref, ref)
    assert same.value == pytest.approx(1.0) and same.details["sqnr_db"] == float("inf")
    flipped = get_metric("fidelity")(_outputs([[0.0, 1.0], [0.0, 2.0]]), ref)
    assert flipped.value == pytest.approx(0.5)
    assert flipped.details["top1_agreement"] == pytest.approx(0.5)


def test_fidelity_sqnr_matches_definition() -> None:
    ref = _outputs([[3.0, 4.0]])
    noisy = _outputs([[3.0, 4.5]])
    sqnr = get_metric("fidelity")(noisy, ref).details["sqnr_db"]
    assert sqnr == pytest.approx(10 * np.log10(25 / 0.25))


def test_fidelity_needs_reference() -> None:
    with pytest.raises(MetricError, match="--reference"):
        get_metric("fidelity")(_outputs([[1.0]]), None)


def test_callable_metric_gets_stacked_outputs() -> None:
    def mean_first(outputs, labels):
        return float(outputs["y"][:, 0].mean())

    assert get_metric(mean_first)(_outputs([[1.0, 0.0], [3.0, 0.0]]), None).value == 2.0


def test_callable_metric_must_return_a_number() -> None:
    with pytest.raises(MetricError, match="must return a number"):
        get_metric(lambda outputs, labels: "high")(_outputs([[1.0]]), None)


def test_unknown_metric_lists_known() -> None:
    with pytest.raises(MetricError, match="fidelity, top1"):
        get_metric("accuracy")
