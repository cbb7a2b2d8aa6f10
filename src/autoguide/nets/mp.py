"""Magnitude-preserving (MP) primitives of EDM2.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"
(EDM2), Sections 2.3-2.5 and Appendix B. Every primitive keeps unit expected magnitude
(RMS 1) of activations that have unit magnitude on input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: mp_silu divisor: E[silu(x)^2]^(1/2) for x ~ N(0, 1) is about 0.596 (EDM2 eq. 81).
SILU_RMS = 0.596


def slice_norms(x: torch.Tensor, dim: int | list[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``eps + ||x|| / sqrt(numel_per_slice)`` per slice (kept dimensions), in float32 or wider:
    the denominator of ``normalize``."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    return torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))


def normalize(x: torch.Tensor, dim: int | list[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Scale each slice of ``x`` to unit RMS: ``x / (eps + ||x|| / sqrt(numel_per_slice))``.

    ``dim`` are the reduced dimensions (default: all but the first, i.e. per output channel
    of a weight tensor). EDM2 eq. 47 / Algorithm "normalize".
    """
    return x / slice_norms(x, dim, eps).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU: ``silu(x) / 0.596`` (EDM2 Sec. 3.3)."""
    return F.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving blend: ``((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)`` (EDM2 eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation along ``dim`` with balance ``t`` (EDM2 eq. 103).

    With ``Na``, ``Nb`` channels, ``C = sqrt((Na + Nb) / ((1 - t)^2 + t^2))``; the parts are
    scaled by ``C (1 - t) / sqrt(Na)`` and ``C t / sqrt(Nb)`` so the result has unit magnitude
    and ``b`` contributes the share ``t``.
    """
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    wa = c / math.sqrt(na) * (1 - t)
    wb = c / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


class MPFourier(nn.Module):
    """Fourier features with fixed random frequencies: ``sqrt(2) cos(freqs x + phases)``.

    Buffers ``freqs = 2 pi N(0, 1) * bandwidth`` and ``phases = 2 pi U(0, 1)``; the output has
    unit magnitude for any input (EDM2 Sec. 3.3, "magnitude-preserving Fourier features").
    """

    freqs: torch.Tensor
    phases: torch.Tensor

    def __init__(self, num_channels: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).outer(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)
