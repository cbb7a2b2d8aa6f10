"""Laplacian pyramid (Burt & Adelson 1983) of a batch of images, for frequency-decoupled
guidance (docs/design.md, "Sampling").

The same construction as kornia's ``build_laplacian_pyramid`` and ``pyrup`` (which diffusers'
FrequencyDecoupledGuidance uses): the 5-tap binomial filter ``[1, 4, 6, 4, 1] / 16`` along
each axis with reflect padding; ``down(g) = bilinear_half(blur(g))``,
``up(g) = blur(bilinear_double(g))`` (``align_corners=False``). Gaussian levels
``g_0 = x``, ``g_{k+1} = down(g_k)``; bands ``b_k = g_k - up(g_{k+1})`` for ``k < L - 1`` (the
highest frequencies first) and ``b_{L-1} = g_{L-1}``. The inverse, ``g_k = up(g_{k+1}) + b_k``
from the last band, returns ``x`` exactly for any bands of a pyramid and is linear in the bands.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from autoguide.sample.blur import separable_filter_2d

BINOMIAL_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def check_pyramid_shape(shape: tuple[int, ...], levels: int) -> str | None:
    """Why images of ``shape`` cannot be split into ``levels`` bands (``None`` if they can):
    ``[N, C, H, W]`` with ``H`` and ``W`` divisible by ``2^(levels - 1)``."""
    if levels == 1:
        return None
    if len(shape) != 4:
        return f"needs images [N, C, H, W], got samples of shape {list(shape[1:])}"
    stride = 2 ** (levels - 1)
    if shape[-2] % stride or shape[-1] % stride:
        return f"{levels} bands need H and W divisible by {stride}, got {shape[-2]}x{shape[-1]}"
    return None


def _blur(x: torch.Tensor) -> torch.Tensor:
    return separable_filter_2d(x, torch.tensor(BINOMIAL_TAPS, dtype=x.dtype, device=x.device))


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(_blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def _up(x: torch.Tensor) -> torch.Tensor:
    return _blur(F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The ``levels`` bands of ``x [N, C, H, W]``, highest frequencies first."""
    problem = check_pyramid_shape(tuple(x.shape), levels)
    if problem:
        raise ValueError(f"Laplacian pyramid: {problem}")
    gaussians = [x]
    for _ in range(levels - 1):
        gaussians.append(_down(gaussians[-1]))
    return [g - _up(coarser) for g, coarser in itertools.pairwise(gaussians)] + [gaussians[-1]]


def from_pyramid(bands: list[torch.Tensor]) -> torch.Tensor:
    """The image whose pyramid is ``bands`` (the inverse of ``laplacian_pyramid``)."""
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = _up(image) + band
    return image
