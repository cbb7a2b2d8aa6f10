"""Which swept setting each method reports, and whether the issue's target is met.

Rows are the ``sweep.csv`` rows of ``autoguide-sweep`` with the exact toy metrics
(``autoguide.eval.toy_metrics``): ``toy_logp`` (mean ground-truth log-density, higher is
better), ``toy_outliers`` (share below the 1% density level, lower is better),
``toy_precision`` and ``toy_recall``.

Rules, fixed before looking at any result:
- unguided reference: the weight-1 row (over the main EMA lengths) with the highest ``toy_logp``;
- each guided method: among its rows with the reference's main EMA and
  ``toy_recall >= RECALL_FLOOR * reference toy_recall``, the highest ``toy_logp``;
- target (evaluation issue): the autoguidance pick has
  ``toy_outliers <= (1 - MIN_OUTLIER_CUT) * reference toy_outliers`` and the recall floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]

RECALL_FLOOR = 0.95
MIN_OUTLIER_CUT = 0.40


def best_logp(rows: Sequence[Row]) -> Row | None:
    """The row with the highest ``toy_logp`` (None for no rows)."""
    return max(rows, key=lambda r: float(r["toy_logp"]), default=None)


def unguided_reference(rows: Sequence[Row]) -> Row:
    """The weight-1 row with the highest ``toy_logp``; its main EMA is used by every method."""
    unguided = [r for r in rows if float(r["weight"]) == 1.0]
    if not unguided:
        raise ValueError("no unguided (weight 1) rows to choose the reference from")
    return best_logp(unguided)


def same_main(rows: Sequence[Row], reference: Row) -> list[Row]:
    """The rows that use the reference's main model (same main EMA std and time)."""
    return [r for r in rows if r["main_model"] == reference["main_model"]]


def pick(rows: Sequence[Row], reference: Row, recall_floor: float = RECALL_FLOOR) -> Row | None:
    """Highest ``toy_logp`` among ``rows`` whose recall is at least ``recall_floor`` times the
    reference's; None when no row keeps that much recall."""
    floor = recall_floor * float(reference["toy_recall"])
    return best_logp([r for r in rows if float(r["toy_recall"]) >= floor])


def at_weight(rows: Sequence[Row], weight: float) -> Row | None:
    """The row with the highest ``toy_logp`` among those with guidance weight ``weight``."""
    return best_logp([r for r in rows if float(r["weight"]) == weight])


def target(reference: Row, chosen: Row | None) -> dict[str, Any]:
    """Outlier cut ``1 - out/out_ref`` and recall ratio ``rec/rec_ref`` of ``chosen`` and
    whether both meet the issue's target."""
    if chosen is None:
        return {"outlier_cut": None, "recall_ratio": None, "met": False}
    cut = 1.0 - float(chosen["toy_outliers"]) / float(reference["toy_outliers"])
    ratio = float(chosen["toy_recall"]) / float(reference["toy_recall"])
    return {"outlier_cut": cut, "recall_ratio": ratio, "met": bool(cut >= MIN_OUTLIER_CUT and ratio >= RECALL_FLOOR)}
