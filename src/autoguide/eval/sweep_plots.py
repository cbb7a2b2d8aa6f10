"""Plots of a guidance sweep, after the sensitivity figures of the autoguidance paper
(Karras et al. 2024): the metric against the guidance weight, one curve per guide, and the
metric over the two EMA lengths (main x guide) as a heat map. Each point or cell shows the
best value over the axes it does not show. Rendered with matplotlib's Agg backend
(``Figure`` objects, no display), written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoguide.eval.evaluator import lower_is_better
from autoguide.io import atomic_path

Row = Mapping[str, Any]


def best_row(rows: Sequence[Row], metric: str) -> Row:
    """The row with the best ``metric`` (lowest for FD-like metrics, else highest)."""
    sign = 1 if lower_is_better(metric) else -1
    return min(rows, key=lambda r: sign * float(r[metric]))


def best_by(rows: Sequence[Row], metric: str, keys: Sequence[str]) -> dict[tuple, Row]:
    """For every distinct value tuple of ``keys``, the best row having it."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return {key: best_row(group, metric) for key, group in groups.items()}


def curve(row: Row) -> str:
    """The curve (and heat map) a row belongs to: its guide, and its term variant if any."""
    return f"{row['guide']} {row['variant']}" if row.get("variant") else str(row["guide"])


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def plot_weight(path: Path, rows: Sequence[Row], metric: str) -> None:
    """``metric`` against the guidance weight, one curve per guide and term variant; the best
    setting starred."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for guide in dict.fromkeys(curve(r) for r in rows):
        points = sorted(best_by([r for r in rows if curve(r) == guide], metric, ["weight"]).items())
        ax.plot([k[0] for k, _ in points], [float(r[metric]) for _, r in points], marker="o", label=str(guide))
    best = best_row(rows, metric)
    ax.plot(
        [best["weight"]],
        [float(best[metric])],
        marker="*",
        markersize=16,
        color="black",
        linestyle="none",
        label="best",
    )
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs guidance weight (best over EMA lengths and intervals)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _std_label(std: float | None) -> str:
    """An EMA std as a tick label; ``-`` for none (a model file without one)."""
    return "-" if std is None else f"{std:g}"


def plot_ema(path: Path, rows: Sequence[Row], metric: str) -> None:
    """Heat maps of ``metric`` over (main EMA std, guide EMA std), one per guide and term variant, each cell the
    best over weights and intervals; the best cell of each map is framed."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    guides = list(dict.fromkeys(curve(r) for r in rows))
    fig = Figure(figsize=(4.8 * len(guides), 4.2), dpi=120, layout="constrained")
    for index, guide in enumerate(guides):
        ax = fig.add_subplot(1, len(guides), index + 1)
        cells = best_by([r for r in rows if curve(r) == guide], metric, ["main_std", "guide_std"])
        main_stds, guide_stds = (sorted({k[i] for k in cells}, key=lambda s: (s is None, s)) for i in (0, 1))
        values = np.full((len(guide_stds), len(main_stds)), np.nan)
        for (m, g), row in cells.items():
            values[guide_stds.index(g), main_stds.index(m)] = float(row[metric])
        image = ax.imshow(
            values, origin="lower", cmap="viridis_r" if lower_is_better(metric) else "viridis", aspect="auto"
        )
        for (i, j), value in np.ndenumerate(values):
            ax.text(
                j,
                i,
                f"{value:.4g}",
                ha="center",
                va="center",
                fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0},
            )
        best = np.unravel_index(np.nanargmin(values) if lower_is_better(metric) else np.nanargmax(values), values.shape)
        ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(main_stds)), [_std_label(s) for s in main_stds])
        ax.set_yticks(range(len(guide_stds)), [_std_label(s) for s in guide_stds])
        ax.set_xlabel("main EMA std")
        ax.set_ylabel("guide EMA std")
        ax.set_title(f"{guide}: {metric} (best over weights)", fontsize=9)
        fig.colorbar(image, ax=ax)
    _save(fig, path)
