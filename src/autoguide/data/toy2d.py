"""The 2D toy of the autoguidance paper (Karras et al. 2024, Fig. 1): a Gaussian mixture shaped
like two trees (classes A and B) with exact density, score and denoiser at every noise level.

Construction (docs/design.md, "The 2D toy distribution"), with one numpy ``RandomState(2)`` shared by both trees,
class A grown first, then class B. A branch at ``(depth, pos, angle)`` with ``depth < 7`` draws
``dist = 0.292 * 0.8^depth * (1 + 0.2 randn())``, sets ``thick = 0.2 * 0.8^depth / dist``,
``size = scale * dist * 0.06``, ``dir = (cos angle, sin angle)`` and places 8 components at
``t in linspace(0.07, 0.93, 8)``: weight ``dist * 0.5^depth``, mean ``(pos + dir dist t) * scale``,
covariance ``(dir dir^T + (I - dir dir^T) thick^2) * (size size^T)`` (elementwise). It then
recurses for sign +1, then -1, into ``(depth + 1, pos + dir dist, angle + sign 0.7^depth
(1 + 0.2 randn()))``. A tree has 2^7 - 1 = 127 branches, i.e. 1016 components.

Noisy density: ``p_sigma(x) = sum_k w_k N(x; mu_k, C_k + sigma^2 I)`` (weights normalised over
the selected classes). Score:
``grad log p_sigma(x) = -sum_k r_k(x) (C_k + sigma^2 I)^-1 (x - mu_k)`` with responsibilities
``r_k``; the exact EDM denoiser is Tweedie's formula
``D(x, sigma) = E[x0 | x] = x + sigma^2 grad log p_sigma(x)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.utils.data import Dataset

SEED = 2
ORIGIN = np.array([0.0030, 0.0325])
SCALE = np.array([1.3136, 1.3844])
MAX_DEPTH = 7
COMPONENTS_PER_BRANCH = 8
CLASS_NAMES = ("A", "B")
CLASS_ANGLES = {"A": math.pi / 4, "B": 5 * math.pi / 4}
CHUNK = 2048  # rows evaluated at once on accelerators, bounds memory at CHUNK x num_components
#: On the CPU, rows x components per chunk: the [rows, K] temporaries then stay in cache
#: (benchmarks/toy_exact_target.py, interleaved runs here: 1.3-1.9x faster than 2048 rows for the
#: toy recipe's 4096 float32 points x 1016 components, 1.9-2.4x for float64 metrics on 10,000 points).
CPU_CHUNK_ELEMENTS = 1 << 17


def _grow(rng: np.random.RandomState, depth: int, pos: np.ndarray, angle: float, out: list) -> None:
    """Append the (weight, mean, cov) of the branch at ``(depth, pos, angle)`` and its subtree."""
    if depth >= MAX_DEPTH:
        return
    dist = 0.292 * 0.8**depth * (1 + 0.2 * rng.randn())
    thick = 0.2 * 0.8**depth / dist
    size = SCALE * dist * 0.06
    direction = np.array([math.cos(angle), math.sin(angle)])
    along = np.outer(direction, direction)
    cov = (along + (np.eye(2) - along) * thick**2) * np.outer(size, size)
    for t in np.linspace(0.07, 0.93, COMPONENTS_PER_BRANCH):
        out.append((dist * 0.5**depth, (pos + direction * dist * t) * SCALE, cov))
    for sign in (1, -1):
        child_angle = angle + sign * 0.7**depth * (1 + 0.2 * rng.randn())
        _grow(rng, depth + 1, pos + direction * dist, child_angle, out)


@functools.lru_cache(maxsize=1)
def _tree_components() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Unnormalised (weights [K], means [K, 2], covs [K, 2, 2]) of each class's tree."""
    rng = np.random.RandomState(SEED)
    trees = {}
    for name in CLASS_NAMES:
        out: list = []
        _grow(rng, 0, ORIGIN, CLASS_ANGLES[name], out)
        weights, means, covs = zip(*out, strict=True)
        trees[name] = (np.array(weights), np.array(means), np.array(covs))
    return trees


def _as_sigma(sigma: float | torch.Tensor, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Noise level per row [n] in ``dtype`` (a scalar is broadcast)."""
    sigma = torch.as_tensor(sigma, dtype=dtype)
    return sigma.reshape(-1).expand(n) if sigma.numel() == 1 else sigma.reshape(n)


class ToyMixture:
    """A 2D Gaussian mixture with exact noisy log-density, score and denoiser (computed in
    ``dtype``: float64 for metrics; float32 is enough for training targets and twice as fast).

    ``weights`` [K] (sum 1), ``means`` [K, 2], ``covs`` [K, 2, 2], ``classes`` [K] (class index
    of each component, A = 0, B = 1).
    """

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covs: torch.Tensor,
        classes: torch.Tensor,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.dtype = dtype
        self.weights = weights.to(dtype)
        self.means = means.to(dtype)
        self.covs = covs.to(dtype)
        self.classes = classes.to(torch.long)

    def select(self, class_index: int | None = None, dtype: torch.dtype | None = None) -> ToyMixture:
        """The mixture of class ``class_index``'s components only, weights renormalised
        (``p(x | c)``), or of all components when ``None``; in ``dtype`` (default: this one's)."""
        keep = slice(None) if class_index is None else self.classes == class_index
        weights = self.weights[keep]
        if not len(weights):
            raise ValueError(f"toy mixture has no components of class {class_index}")
        return ToyMixture(
            weights / weights.sum(), self.means[keep], self.covs[keep], self.classes[keep], dtype or self.dtype
        )

    def sample(
        self, n: int, generator: torch.Generator | None = None, return_labels: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact samples [n, 2] (in ``dtype``): pick component k with probability w_k, then
        ``mu_k + L_k z`` with ``L_k L_k^T = C_k``. With ``return_labels`` also their class
        indices [n]."""
        device = self.means.device
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, 2, 1, generator=generator, dtype=self.dtype, device=device)
        x = self.means[k] + (torch.linalg.cholesky(self.covs)[k] @ z)[..., 0]
        return (x, self.classes[k]) if return_labels else x

    def _log_terms(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log w_k + log N(x; mu_k, C_k + sigma^2 I)`` [n, K] and the two coordinates [n, K]
        of ``(C_k + sigma^2 I)^-1 (x - mu_k)``, with the 2x2 inverse in closed form."""
        var = (sigma**2)[:, None]
        a = self.covs[:, 0, 0] + var
        b = self.covs[:, 0, 1]
        c = self.covs[:, 1, 1] + var
        det = a * c - b * b
        d0 = x[:, 0, None] - self.means[:, 0]
        d1 = x[:, 1, None] - self.means[:, 1]
        p0 = (c * d0 - b * d1) / det
        p1 = (a * d1 - b * d0) / det
        log_normal = -0.5 * (d0 * p0 + d1 * p1) - 0.5 * torch.log(det) - math.log(2 * math.pi)
        return torch.log(self.weights) + log_normal, p0, p1

    def rows_per_chunk(self, device: torch.device) -> int:
        """Rows evaluated at once: cache-sized on the CPU (``CPU_CHUNK_ELEMENTS`` / components),
        ``CHUNK`` elsewhere (fewer, larger kernels)."""
        return max(1, CPU_CHUNK_ELEMENTS // len(self.weights)) if device.type == "cpu" else CHUNK

    def _chunks(self, x: torch.Tensor, sigma: float | torch.Tensor):
        x = x.to(self.dtype).reshape(-1, 2)
        sigma = _as_sigma(sigma, len(x), self.dtype).to(x.device)
        rows = self.rows_per_chunk(x.device)
        for start in range(0, len(x), rows):
            yield x[start : start + rows], sigma[start : start + rows]

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p_sigma(x)`` [n] of the mixture convolved with N(0, sigma^2 I); ``sigma`` a
        scalar or one per row."""
        return torch.cat([torch.logsumexp(self._log_terms(xc, sc)[0], 1) for xc, sc in self._chunks(x, sigma)])

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``grad_x log p_sigma(x) = -sum_k r_k (C_k + sigma^2 I)^-1 (x - mu_k)`` [n, 2]."""
        parts = []
        for xc, sc in self._chunks(x, sigma):
            log_terms, p0, p1 = self._log_terms(xc, sc)
            r = torch.softmax(log_terms, 1)
            parts.append(-torch.stack([(r * p0).sum(1), (r * p1).sum(1)], 1))
        return torch.cat(parts)

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Exact EDM denoiser ``E[x0 | x] = x + sigma^2 score(x, sigma)`` [n, 2] (Tweedie)."""
        x = x.to(self.dtype).reshape(-1, 2)
        sigma = _as_sigma(sigma, len(x), self.dtype).to(x.device)
        return x + sigma[:, None] ** 2 * self.score(x, sigma)


def toy_mixture(classes: str = "AB") -> ToyMixture:
    """The tree mixture of ``classes`` ("A", "B" or "AB"); weights normalised over them."""
    if classes not in ("A", "B", "AB"):
        raise ValueError(f"toy2d classes must be 'A', 'B' or 'AB', got {classes!r}")
    trees = _tree_components()
    parts = [(CLASS_NAMES.index(name), *trees[name]) for name in classes]
    weights = torch.from_numpy(np.concatenate([w for _, w, _, _ in parts]))
    means = torch.from_numpy(np.concatenate([m for _, _, m, _ in parts]))
    covs = torch.from_numpy(np.concatenate([c for _, _, _, c in parts]))
    labels = torch.cat([torch.full((len(w),), i) for i, w, _, _ in parts])
    return ToyMixture(weights / weights.sum(), means, covs, labels)


class ExactToyDenoiser(torch.nn.Module):
    """The exact denoiser of ``toy_mixture(classes)``, callable like a network:
    ``D(x, sigma, labels=None)`` with ``x`` [N, 2], ``sigma`` [N] or scalar.

    It is unconditional (``label_dim = 0``): ``labels`` are ignored, the class set is fixed at
    construction. Computed in float64, returned in ``x``'s dtype. With ``return_logvar`` the
    uncertainty is the constant 0 (shape [N, 1]).
    """

    label_dim = 0
    img_channels = 2
    img_resolution = 0
    sigma_data = 0.5

    weights: torch.Tensor
    means: torch.Tensor
    covs: torch.Tensor
    classes: torch.Tensor

    def __init__(self, classes: str = "A") -> None:
        super().__init__()
        mixture = toy_mixture(classes)
        self.config = {"arch": "exact_toy", "classes": classes}
        self.register_buffer("weights", mixture.weights)
        self.register_buffer("means", mixture.means)
        self.register_buffer("covs", mixture.covs)
        self.register_buffer("classes", mixture.classes)

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        labels: torch.Tensor | None = None,
        return_logvar: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mixture = ToyMixture(self.weights, self.means, self.covs, self.classes)
        d = mixture.denoise(x, sigma).to(x.dtype)
        return (d, torch.zeros(len(x), 1, device=x.device)) if return_logvar else d


class Toy2DDataset(Dataset):
    """``num_samples`` fixed samples of ``toy_mixture(classes)`` drawn with ``seed``; items are
    ``(x [2] float32, class index)`` with A = 0, B = 1 (``label_dim = 2``).

    ``exact_denoiser`` gives the training loss the exact target ``E[x0 | x]`` instead of the
    sample ``x0`` (``train.target=exact``)."""

    label_dim = len(CLASS_NAMES)
    img_channels = 2
    img_resolution = 0

    def __init__(self, classes: str = "AB", num_samples: int = 65536, seed: int = 0) -> None:
        if num_samples <= 0:
            raise ValueError(f"toy2d num_samples must be positive, got {num_samples}")
        mixture = toy_mixture(classes)
        generator = torch.Generator().manual_seed(seed)
        x, labels = mixture.sample(num_samples, generator, return_labels=True)
        self.points = x.to(torch.float32)
        self.labels = labels
        # Training targets per conditioning: -1 = no label (every class of the dataset), else one class.
        self.target_mixtures = {-1: mixture.select(None, torch.float32)}
        for index in labels.unique().tolist():
            self.target_mixtures[index] = mixture.select(index, torch.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.points[index], int(self.labels[index])

    def exact_denoiser(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``E[x0 | x, c]`` [N, 2] (float32 arithmetic, returned in ``x``'s dtype), the posterior
        mean of the training distribution: per row of one-hot ``labels`` [N, 2] that class's
        mixture; rows of zeros (dropped labels) and ``labels=None`` the mixture of all this
        dataset's classes."""
        x, sigma = x.detach(), sigma.detach().reshape(-1)
        if labels is None or not labels.numel():
            return self.target_mixtures[-1].denoise(x, sigma).to(x.dtype)
        conditioning = torch.where(labels.sum(1) > 0, labels.argmax(1), -1)
        out = torch.empty_like(x)
        for index in conditioning.unique().tolist():
            if index not in self.target_mixtures:
                raise ValueError(
                    f"toy2d: label {index} is not a class of this dataset ({sorted(self.target_mixtures)})"
                )
            rows = conditioning == index
            out[rows] = self.target_mixtures[index].denoise(x[rows], sigma[rows]).to(x.dtype)
        return out
