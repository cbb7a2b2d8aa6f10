"""Separable Gaussian blur over a 2D grid (SEG query blur, SAG image blur).

Hong 2024, "Smoothed Energy Guidance" (SEG): a Gaussian of standard deviation ``sigma`` with
``k = ceil(6 sigma) + 1 - ceil(6 sigma) % 2`` taps (the odd size covering +-3 sigma),
``g[j] = exp(-(j - (k-1)/2)^2 / (2 sigma^2)) / sum``, applied along each grid axis with
reflect padding (``d c b | a b c d | c b a``; pads longer than the grid keep reflecting).
``sigma = 0`` is the identity and ``sigma = inf`` the limit of infinite blur: every position
becomes the mean over the grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel_size(sigma: float) -> int:
    """``ceil(6 sigma) + 1 - ceil(6 sigma) % 2``: the odd number of taps for ``sigma``."""
    span = math.ceil(6 * sigma)
    return span + 1 - span % 2


def gaussian_kernel(
    sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The normalised 1D Gaussian taps ``[k]`` for standard deviation ``sigma > 0``."""
    size = gaussian_kernel_size(sigma)
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def reflect_indices(n: int, pad: int) -> torch.Tensor:
    """Source index of every position of a length-``n`` axis reflect-padded by ``pad`` each side."""
    i = torch.arange(-pad, n + pad)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = i.remainder(period)
    return torch.where(j >= n, period - j, j)


def _blur_last_axis(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    pad = (len(taps) - 1) // 2
    padded = x.index_select(-1, reflect_indices(x.shape[-1], pad).to(x.device))
    flat = padded.reshape(-1, 1, padded.shape[-1])
    return F.conv1d(flat, taps.reshape(1, 1, -1)).reshape(x.shape)


def gaussian_blur_2d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``x [..., H, W]`` over its last two axes with a Gaussian of std ``sigma`` (in grid cells)."""
    if sigma < 0 or math.isnan(sigma):
        raise ValueError(f"blur sigma must be >= 0 (or inf), got {sigma}")
    if sigma == 0:
        return x
    if math.isinf(sigma):
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    return separable_filter_2d(x, gaussian_kernel(sigma, dtype=x.dtype, device=x.device))


def separable_filter_2d(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Filter ``x [..., H, W]`` with the odd 1D ``taps`` along each of its last two axes, reflect-padded."""
    x = _blur_last_axis(x, taps)
    return _blur_last_axis(x.transpose(-1, -2), taps).transpose(-1, -2)
