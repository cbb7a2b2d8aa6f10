"""The search-vs-grid table on a hand-made result (no runs needed)."""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from search_table import report  # noqa: E402


def search(seed, logp, gap):
    return {
        "seed": seed,
        "guide_nimg": 1024,
        "gap": gap,
        "best": {
            "setting": {"main_std": 0.02, "guide_std": 0.01, "weight": 2.5},
            "search": {"value": logp + 0.1},
            "holdout": {"metrics": {"toy_logp": logp, "toy_outliers": 0.07}},
            "trials": {"complete": 5, "pruned": 20},
            "images_spent": 900,
        },
    }


def test_table_rows_and_worst_gap():
    grid = {
        "settings": 4,
        "images": 3600,
        "best": {"main_std": 0.01, "guide_std": 0.05, "guide_nimg": 2048, "weight": 3.0, "toy_logp": 0.8},
        "heldout": {"toy_logp": 0.5, "toy_outliers": 0.06},
    }
    text = report(
        {
            "select": "toy_logp",
            "images": 900,
            "budget": 900,
            "share": 0.25,
            "rungs": [100, 300, 900],
            "grid": grid,
            "searches": [search(0, 0.49, 0.02), search(1, 0.6, -0.2)],
        }
    )
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1] == "| grid | 0.010 | 0.050 | 2048 | 3.00 | 0.8000 | 0.5000 | - | toy_outliers 0.06 | 4 / 0 | 3600 |"
    assert (
        "| search seed 0 | 0.020 | 0.010 | 1024 | 2.50 | 0.5900 | 0.4900 | +2.0% (-0.010) | toy_outliers 0.07 | "
        "5 / 20 | 900 |" in text
    )
    assert "Worst gap over 2 search seeds: +2.0%; mean -9.0%." in text
    assert "Search budget: 900 (25%); rungs [100, 300, 900]" in text
