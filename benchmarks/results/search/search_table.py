"""The table of ``run.py``: the dense grid and each search, held-out values side by side."""

from __future__ import annotations

from typing import Any


def report(result: dict[str, Any]) -> str:
    """``results.md``: the grid and each search, held-out values side by side."""
    grid_best, grid_held = result["grid"]["best"], result["grid"]["heldout"]
    lines = [
        f"Grid: {result['grid']['settings']} settings x {result['images']} images = {result['grid']['images']} image "
        f"evaluations. Search budget: {result['budget']} ({result['share']:.0%}); rungs {result['rungs']}.",
        "",
        "| | main std | guide std | guide nimg | weight | log p (search seeds) | log p held out | gap to grid | "
        "outliers held out | recall held out | trials (complete / pruned) | images measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| grid | {grid_best['main_std']:.3f} | {grid_best['guide_std']:.3f} | {grid_best['guide_nimg']} | "
        f"{grid_best['weight']:.2f} | {grid_best['toy_logp']:.4f} | {grid_held['toy_logp']:.4f} | - | "
        f"{grid_held['toy_outliers']:.4f} | {grid_held['toy_recall']:.3f} | {result['grid']['settings']} / 0 | "
        f"{result['grid']['images']} |",
    ]
    for run in result["searches"]:
        s, held = run["best"]["setting"], run["best"]["holdout"]["metrics"]
        lines.append(
            f"| search seed {run['seed']} | {s['main_std']:.3f} | {s['guide_std']:.3f} | {run['guide_nimg']} | "
            f"{s['weight']:.2f} | {run['best']['search']['value']:.4f} | {held['toy_logp']:.4f} | "
            f"{run['gap']:+.1%} ({held['toy_logp'] - grid_held['toy_logp']:+.3f}) | {held['toy_outliers']:.4f} | "
            f"{held['toy_recall']:.3f} | {run['best']['trials'].get('complete', 0)} / {run['best']['trials'].get('pruned', 0)} | "
            f"{run['best']['images_spent']} |")
    gaps = [run["gap"] for run in result["searches"]]
    lines += ["", "gap to grid: (grid held-out log p - search held-out log p) / |grid held-out log p| (positive: the "
              "search's pick is worse), with the difference of the search's held-out log p from the grid's in nats.",
              f"Worst gap over {len(gaps)} search seeds: {max(gaps):+.1%}; mean {sum(gaps) / len(gaps):+.1%}." if gaps else ""]
    return "\n".join(lines) + "\n"
