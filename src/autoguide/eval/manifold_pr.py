"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models").

Each set approximates its manifold by the union of balls around its points, the radius of
the ball around ``x`` being the distance to its k-th nearest neighbour within its own set
(itself excluded; the paper uses k = 3):

    f(y, X)   = 1 if ||y - x|| <= NND_k(x) for some x in X, else 0
    precision = mean over generated y of f(y, real)
    recall    = mean over real x of f(x, generated)

Distances are computed in row blocks so that memory stays bounded for any set size.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_K = 3
BLOCK_ELEMENTS = 2**25  # distance-matrix entries held at once (128 MiB in float32)


def _as_tensor(points: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    x = torch.as_tensor(points)
    if x.ndim != 2:
        raise ValueError(f"expected points of shape [N, D], got {list(x.shape)}")
    return x.to(device=device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _row_blocks(rows: int, cols: int):
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def knn_radii(points: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """Distance from every point ``[N, D]`` to its k-th nearest other point ``[N]``."""
    if len(points) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {len(points)}")
    radii = [
        torch.cdist(points[rows], points).kthvalue(k + 1, dim=1).values
        for rows in _row_blocks(len(points), len(points))
    ]
    return torch.cat(radii)


def manifold_coverage(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``queries`` inside at least one ball ``(centers[j], radii[j])``."""
    inside = 0
    for rows in _row_blocks(len(queries), len(centers)):
        inside += int((torch.cdist(queries[rows], centers) <= radii[None]).any(dim=1).sum())
    return inside / len(queries)


def precision_recall(
    real: np.ndarray | torch.Tensor,
    generated: np.ndarray | torch.Tensor,
    k: int = DEFAULT_K,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """``(precision, recall)`` of ``generated [M, D]`` against ``real [N, D]`` with k-NN balls."""
    real_t, gen_t = _as_tensor(real, device), _as_tensor(generated, device)
    if real_t.shape[1] != gen_t.shape[1]:
        raise ValueError(f"real and generated features differ in width: {real_t.shape[1]} vs {gen_t.shape[1]}")
    gen_t = gen_t.to(real_t.dtype)
    precision = manifold_coverage(gen_t, real_t, knn_radii(real_t, k))
    recall = manifold_coverage(real_t, gen_t, knn_radii(gen_t, k))
    return precision, recall
