"""Fréchet distance between Gaussians fitted to features (Heusel et al. 2017, "GANs Trained by a
Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"; FID when the features are
Inception-v3 pool3, FD_DINOv2 with DINOv2 ViT-L/14, Stein et al. 2023).

    FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

The trace of the matrix square root is computed without forming ``(S_1 S_2)^(1/2)``:
``S_1 S_2`` is similar to the symmetric PSD matrix ``M = S_1^(1/2) S_2 S_1^(1/2)``, so
``tr (S_1 S_2)^(1/2) = sum_i sqrt(lambda_i(M))``, with both square roots from symmetric
eigendecompositions (tiny negative eigenvalues from round-off are clipped to 0). All in float64.

FD estimated from ``N`` samples is biased upward, to first order by ``k / N`` with ``k`` depending
on the two distributions (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score
and where to find them"), so FDs of sets with different diversity are not comparable at small
``N``. ``frechet_distance_infinity`` extrapolates to ``N -> infinity`` as that paper does: FD
on random subsets of ``N_i`` rows, ``N_i`` evenly spaced up to ``N``, a least-squares line
``FD(N_i) = FD_inf + k / N_i``, and its intercept ``FD_inf``.
"""

from __future__ import annotations

import numpy as np


class GaussianAccumulator:
    """Streaming mean and covariance (unbiased, ``ddof = 1`` as ``np.cov``) of feature rows.

    Keeps ``n``, ``sum x`` and ``sum x x^T`` in float64, so any number of batches costs
    ``O(D^2)`` memory: ``mu = sum x / n``, ``S = (sum x x^T - n mu mu^T) / (n - 1)``.
    """

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: np.ndarray) -> None:
        """Add rows ``features [N, D]``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.total):
            raise ValueError(f"expected features of shape [N, {len(self.total)}], got {list(x.shape)}")
        self.n += len(x)
        self.total += x.sum(0)
        self.outer += x.T @ x

    def add(self, other: GaussianAccumulator) -> None:
        """Add the rows another accumulator saw (its ``n``, ``sum x``, ``sum x x^T``)."""
        if other.total.shape != self.total.shape:
            raise ValueError(
                f"cannot merge statistics of {len(other.total)}-dim features into {len(self.total)}-dim ones"
            )
        self.n += other.n
        self.total += other.total
        self.outer += other.outer

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu [D], sigma [D, D])``; needs at least two rows."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``features [N, D]`` (float64)."""
    features = np.asarray(features)
    acc = GaussianAccumulator(features.shape[-1])
    acc.update(features)
    return acc.stats()


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via ``eigh`` (negative eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` for Gaussians N(mu1, S1), N(mu2, S2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = len(mu1)
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"Fréchet distance needs means [D] and covariances [D, D] of one D; got mu {mu1.shape}, "
            f"{mu2.shape} and sigma {sigma1.shape}, {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def check_fd_infinity(points: int, min_fraction: float) -> None:
    """Refuse ``fd_infinity`` settings that cannot define a line: ``points >= 2``, ``0 < min_fraction < 1``."""
    if points < 2 or not 0 < min_fraction < 1:
        raise ValueError(
            "fd_infinity: points must be >= 2 (a line needs two sizes) and min_fraction in (0, 1), "
            f"got {points} and {min_fraction}"
        )


def subset_sizes(num_rows: int, points: int, min_fraction: float, dim: int) -> np.ndarray:
    """``points`` subset sizes evenly spaced from ``min_fraction * num_rows`` to ``num_rows``.

    Every size must exceed the feature dimension ``dim`` (smaller sets give singular
    covariances, where FD is far from its ``1 / N`` regime)."""
    check_fd_infinity(points, min_fraction)
    sizes = np.unique(np.linspace(min_fraction * num_rows, num_rows, points).round().astype(int))
    if sizes[0] <= dim or len(sizes) < 2:
        raise ValueError(
            f"fd_infinity: the subsets of {num_rows} samples ({min_fraction} x {num_rows} to {num_rows}) need "
            f"two sizes above the feature dimension {dim}, got {sizes.tolist()}; "
            "generate more samples or raise fd_infinity.min_fraction"
        )
    return sizes


def frechet_distance_infinity(
    features: np.ndarray,
    mu_ref: np.ndarray,
    sigma_ref: np.ndarray,
    points: int = 15,
    min_fraction: float = 0.2,
    seed: int = 0,
) -> float:
    """``FD_inf`` of ``features [N, D]`` against ``N(mu_ref, sigma_ref)`` (Chong & Forsyth 2020).

    For each size ``N_i`` of ``subset_sizes``, FD of a random subset (without replacement, the
    generator seeded by ``seed``; the whole set at ``N_i = N``); then the intercept of the
    least-squares fit ``FD(N_i) = FD_inf + k / N_i``."""
    x = np.asarray(features, dtype=np.float64)
    sizes = subset_sizes(len(x), points, min_fraction, x.shape[1])
    rng = np.random.default_rng(seed)
    values = [frechet_distance(*gaussian_stats(x[rng.permutation(len(x))[:n]]), mu_ref, sigma_ref) for n in sizes]
    return float(np.polyfit(1.0 / sizes, values, 1)[1])
