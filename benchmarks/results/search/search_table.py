"""The table of ``run.py``: the dense grid and each search, held-out values side by side."""

from __future__ import annotations

from typing import Any


def others(metrics: dict[str, float], select: str) -> str:
    """The held-out metrics besides ``select``, ``name value`` pairs."""
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != select)


def report(result: dict[str, Any]) -> str:
    """``results-<dataset>.md``: the grid and each search, held-out values side by side."""
    select = result["select"]
    grid_best, grid_held = result["grid"]["best"], result["grid"]["heldout"]
    lines = [
        f"Grid: {result['grid']['settings']} settings x {result['images']} images = {result['grid']['images']} image "
        f"evaluations. Search budget: {result['budget']} ({result['share']:.0%}); rungs {result['rungs']}.",
        "",
        f"| | main std | guide std | guide nimg | weight | {select} (search seeds) | {select} held out | gap to grid | "
        "other metrics held out | trials (complete / pruned) | images measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| grid | {grid_best['main_std']:.3f} | {grid_best['guide_std']:.3f} | {grid_best['guide_nimg']} | "
        f"{grid_best['weight']:.2f} | {grid_best[select]:.4f} | {grid_held[select]:.4f} | - | "
        f"{others(grid_held, select)} | "
        f"{result['grid']['settings']} / 0 | {result['grid']['images']} |",
    ]
    for run in result["searches"]:
        s, held = run["best"]["setting"], run["best"]["holdout"]["metrics"]
        lines.append(
            f"| search seed {run['seed']} | {s['main_std']:.3f} | {s['guide_std']:.3f} | {run['guide_nimg']} | "
            f"{s['weight']:.2f} | {run['best']['search']['value']:.4f} | {held[select]:.4f} | "
            f"{run['gap']:+.1%} ({held[select] - grid_held[select]:+.3f}) | {others(held, select)} | "
            f"{run['best']['trials'].get('complete', 0)} / {run['best']['trials'].get('pruned', 0)} | "
            f"{run['best']['images_spent']} |"
        )
    spread = result["grid"].get("spread")
    if spread:
        lines += [
            "",
            f"Each pick on three more held-out sets of {result['images']} images ({select} mean +- std over the sets):",
            "",
            "| | mean | std | gap to grid |",
            "|---|---|---|---|",
            f"| grid | {spread['mean'][select]:.4f} | {spread['std'][select]:.4f} | - |",
        ]
        for run in result["searches"]:
            lines.append(
                f"| search seed {run['seed']} | {run['spread']['mean'][select]:.4f} | "
                f"{run['spread']['std'][select]:.4f} | "
                f"{run['spread_gap']:+.1%} |"
            )
    gaps = [run["gap"] for run in result["searches"]]
    lines += [
        "",
        f"gap to grid: how much worse the search's pick is than the grid's on the held-out seeds, relative to "
        f"the grid's held-out {select} (negative: better), with the difference of the two values.",
        f"Worst gap over {len(gaps)} search seeds: {max(gaps):+.1%}; mean {sum(gaps) / len(gaps):+.1%}."
        if gaps
        else "",
    ]
    return "\n".join(lines) + "\n"
