"""The selection rule and target check of the toy2d results, on hand-made sweep rows whose
answers are worked out by hand here (``pytest benchmarks/results/toy2d``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import selection


def row(weight, logp, outliers, recall, main="m1"):
    return {"weight": weight, "toy_logp": logp, "toy_outliers": outliers, "toy_recall": recall, "main_model": main}


UNGUIDED = [row(1.0, -1.0, 0.050, 0.90, "m1"), row(1.0, -0.8, 0.040, 0.80, "m2"), row(2.0, 5.0, 0.0, 0.1, "m1")]


def test_reference_is_best_unguided_logp():
    # the weight-2 row has a higher logp but is not unguided; m2's weight-1 row wins
    assert selection.unguided_reference(UNGUIDED)["main_model"] == "m2"
    with pytest.raises(ValueError, match="weight 1"):
        selection.unguided_reference([row(2.0, 0.0, 0.0, 1.0)])


def test_pick_respects_recall_floor():
    reference = row(1.0, -0.8, 0.040, 0.80)
    rows = [row(2.0, 0.5, 0.01, 0.759), row(3.0, 0.4, 0.02, 0.76), row(4.0, 0.3, 0.02, 0.9), row(1.0, -0.8, 0.04, 0.80)]
    # floor = 0.95 * 0.80 = 0.76: weight 2 (recall 0.759) is out, weight 3 has the best logp left
    assert selection.pick(rows, reference)["weight"] == 3.0
    assert selection.pick(rows, reference, recall_floor=0.9)["weight"] == 2.0  # floor 0.72: all pass
    assert selection.pick([row(2.0, 0.5, 0.01, 0.1)], reference) is None


def test_same_main_filters_by_main_model():
    assert [r["toy_logp"] for r in selection.same_main(UNGUIDED, row(1.0, 0, 0, 0, "m1"))] == [-1.0, 5.0]


def test_at_weight_takes_best_logp_at_that_weight():
    rows = [row(4.0, 0.1, 0.010, 0.5), row(2.0, 0.9, 0.012, 0.7), row(4.0, 0.2, 0.010, 0.6)]
    assert selection.at_weight(rows, 4.0)["toy_logp"] == 0.2
    assert selection.at_weight(rows, 3.0) is None


def test_target_arithmetic():
    reference = row(1.0, -0.8, 0.050, 0.80)
    met = selection.target(reference, row(3.0, 0.0, 0.030, 0.76))  # cut 40%, recall 95%
    assert met["met"] and met["outlier_cut"] == pytest.approx(0.4) and met["recall_ratio"] == pytest.approx(0.95)
    assert not selection.target(reference, row(3.0, 0.0, 0.031, 0.80))["met"]  # cut 38%
    assert not selection.target(reference, row(3.0, 0.0, 0.010, 0.75))["met"]  # recall 93.75%
    assert selection.target(reference, None) == {"outlier_cut": None, "recall_ratio": None, "met": False}
