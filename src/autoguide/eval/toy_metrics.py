"""Exact metrics for the 2D toy (autoguidance paper, Karras et al. 2024, Fig. 1), computed from
the ground-truth mixture ``autoguide.data.toy2d`` instead of a feature network.

For generated points ``x_i`` of class ``c_i`` (the class they were sampled with; unconditional
samples are measured against the mixture of ``classes``):
- ``toy_logp``: mean exact log-density ``(1/N) sum_i log p_{c_i}(x_i)`` (higher is better);
- ``toy_outliers``: share of points with ``log p_{c_i}(x_i) < tau_{c_i}``, where the density
  level ``tau_c`` is the ``outlier_quantile`` (default 1%) quantile of ``log p_c(X)`` over
  ``num_density_samples`` exact samples ``X ~ p_c``. Exact samples therefore score
  ``outlier_quantile`` on average; lower is better;
- ``toy_precision`` / ``toy_recall``: improved precision/recall (k = 3) in the plane against
  exact samples drawn with the same class counts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autoguide.data.toy2d import CLASS_NAMES, ToyMixture, toy_mixture
from autoguide.eval.manifold_pr import DEFAULT_K, precision_recall


@dataclass(frozen=True)
class ToyMetricsConfig:
    """``classes``: the distribution of unconditional samples ("A", "B" or "AB");
    ``outlier_quantile``: quantile of exact log-densities that defines the outlier level;
    ``num_density_samples``: exact samples per class used to estimate that level;
    ``seed``: seed of every exact sample drawn here; ``k``: neighbours of precision/recall."""

    classes: str = "AB"
    outlier_quantile: float = 0.01
    num_density_samples: int = 100_000
    seed: int = 0
    k: int = DEFAULT_K

    def __post_init__(self) -> None:
        if not 0 < self.outlier_quantile < 1:
            raise ValueError(f"toy.outlier_quantile must lie in (0, 1), got {self.outlier_quantile}")
        if self.num_density_samples < 100:
            raise ValueError(f"toy.num_density_samples must be >= 100, got {self.num_density_samples}")


def exact_samples(mixture: ToyMixture, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` exact samples ``[n, 2]`` of ``mixture`` (no labels)."""
    points = mixture.sample(n, generator)
    assert isinstance(points, torch.Tensor)  # without return_labels: the points alone
    return points


@functools.lru_cache(maxsize=8)
def density_level(classes: str, quantile: float, num_samples: int, seed: int) -> float:
    """``tau``: the ``quantile`` of ``log p(X)`` over ``num_samples`` exact samples of ``classes``."""
    mixture = toy_mixture(classes)
    generator = torch.Generator().manual_seed(seed)
    return float(torch.quantile(mixture.log_prob(exact_samples(mixture, num_samples, generator)), quantile))


def _groups(classes: Sequence[int] | None, n: int, default: str) -> dict[str, np.ndarray]:
    """Row indices of the points of each ground-truth distribution name ("A", "B", "AB")."""
    if classes is None:
        return {default: np.arange(n)}
    labels = np.asarray(classes)
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} class labels for {n} points")
    if labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"toy2d class labels must be in [0, {len(CLASS_NAMES)}), got {sorted(set(labels.tolist()))}")
    return {CLASS_NAMES[c]: np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()))}


def toy_metrics(
    points: torch.Tensor, classes: Sequence[int] | None, settings: ToyMetricsConfig = ToyMetricsConfig()
) -> dict[str, float]:
    """Exact toy metrics of ``points [N, 2]`` sampled with class indices ``classes`` (or None)."""
    points = torch.as_tensor(points).to(torch.float64).reshape(len(points), -1)
    if points.shape[1] != 2:
        raise ValueError(f"toy metrics need 2D points [N, 2], got {list(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("toy metrics: some generated points are not finite")
    groups = _groups(classes, len(points), settings.classes)
    log_p = torch.empty(len(points), dtype=torch.float64)
    outlier = torch.empty(len(points), dtype=torch.bool)
    reference = []
    generator = torch.Generator().manual_seed(settings.seed + 1)
    for name, rows in groups.items():
        mixture: ToyMixture = toy_mixture(name)
        log_p[rows] = mixture.log_prob(points[rows])
        outlier[rows] = log_p[rows] < density_level(
            name, settings.outlier_quantile, settings.num_density_samples, settings.seed
        )
        reference.append(exact_samples(mixture, len(rows), generator))
    precision, recall = precision_recall(torch.cat(reference), points, settings.k)
    return {
        "toy_logp": float(log_p.mean()),
        "toy_outliers": float(outlier.to(torch.float64).mean()),
        "toy_precision": precision,
        "toy_recall": recall,
    }
