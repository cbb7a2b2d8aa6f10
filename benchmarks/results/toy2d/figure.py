"""The four-panel picture after Fig. 1 of the autoguidance paper (Karras et al. 2024): exact
samples of class A, then the unguided, CFG and autoguidance samples of the main model, each
over the ground-truth density of class A (filled contours of ``log p_A``) with the outlier level
``tau_A`` (the 1% quantile of ``log p_A`` over exact samples) drawn as a dashed line; samples
below that level (the outliers the metric counts) are drawn in blue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoguide.data.toy2d import toy_mixture
from autoguide.io import atomic_path

GRID = 300  # density evaluations per axis
MARGIN = 0.08  # plot margin around the exact samples, relative to their extent
LOGP_FLOOR = -6.0  # log-densities below this are drawn as the lowest contour band


@dataclass(frozen=True)
class Panel:
    """One scatter panel: its title, a second title line (metrics) and the points [N, 2]."""

    title: str
    subtitle: str
    points: np.ndarray


def extent(points: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)``: the bounding box of ``points`` plus ``MARGIN`` on every side."""
    lo, hi = points.min(0), points.max(0)
    pad = MARGIN * (hi - lo)
    return float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1])


def density_grid(box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs, ys, log p_A)`` on a ``GRID x GRID`` lattice over ``box``."""
    xs, ys = np.linspace(box[0], box[1], GRID), np.linspace(box[2], box[3], GRID)
    mesh = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    logp = toy_mixture("A").log_prob(torch.from_numpy(mesh)).numpy().reshape(GRID, GRID)
    return xs, ys, logp


def draw(path: Path, panels: Sequence[Panel], outlier_level: float) -> None:
    """Write the panels side by side to ``path`` (PNG, atomically); all share the extent of
    the first panel (the exact samples)."""
    from matplotlib.figure import Figure

    box = extent(panels[0].points)
    xs, ys, logp = density_grid(box)
    fig = Figure(figsize=(4.0 * len(panels), 4.3), dpi=110, layout="constrained")
    for index, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        ax.contourf(xs, ys, np.maximum(logp, LOGP_FLOOR), levels=14, cmap="Greys", alpha=0.3)
        ax.contour(
            xs, ys, logp, levels=[outlier_level], colors="tab:red", linewidths=0.5, linestyles="dashed", alpha=0.8
        )
        outlier = toy_mixture("A").log_prob(torch.from_numpy(panel.points)).numpy() < outlier_level
        ax.scatter(
            panel.points[:, 0],
            panel.points[:, 1],
            s=1.5,
            c=np.where(outlier, "tab:blue", "black"),
            linewidths=0,
            alpha=0.8,
        )
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{panel.title}\n{panel.subtitle}", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
