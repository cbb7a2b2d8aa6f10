"""Magnitude-preserving (MP) primitives of EDM2.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"
(EDM2), Sections 2.3-2.5 and Appendix B. Every primitive keeps unit expected magnitude
(RMS 1) of activations that have unit magnitude on input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: mp_silu divisor: E[silu(x)^2]^(1/2) for x ~ N(0, 1) is about 0.596 (EDM2 eq. 81).
SILU_RMS = 0.596


def slice_norms(x: torch.Tensor, dim: int | list[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``eps + ||x|| / sqrt(numel_per_slice)`` per slice (kept dimensions), float32: the
    denominator of ``normalize``."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
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

    def __init__(self, num_channels: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).outer(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class _NormalizedWeight(torch.autograd.Function):
    """``scale * normalize(p)`` of a weight ``p`` whose slices were just force-normalised, with
    ``d1 = eps + ||p|| / sqrt(m)`` per output channel already known (``MPConv.forward``).

    Forward ``p * scale / d1``; backward the Jacobian of ``normalize`` at ``p`` applied to ``g``:
    ``scale / d1 * (g - p (p . g) / (d1 sqrt(m) ||p||))`` per slice, with ``||p|| = (d1 - eps)
    sqrt(m)``. The same values and gradients as autograd through ``normalize`` (EDM2 Sec. 2.5),
    in three passes over the weight instead of about ten (``tests/test_nets.py::
    test_mp_conv_training_forward_and_gradient_equal_the_paper_form``)."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, d1: torch.Tensor, scale: float, eps: float) -> torch.Tensor:
        ctx.save_for_backward(p, d1)
        ctx.scale, ctx.eps = scale, eps
        return p * (scale / d1)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        p, d1 = ctx.saved_tensors
        root_m = math.sqrt(p[0].numel())
        dims = list(range(1, p.ndim))
        dot = (p * g).sum(dim=dims, keepdim=True)
        norm = ((d1 - ctx.eps) * root_m).clamp_min(torch.finfo(p.dtype).tiny)
        return (g - p * (dot / (d1 * root_m * norm))) * (ctx.scale / d1), None, None, None


class MPConv(nn.Module):
    """Magnitude-preserving convolution (``kernel=()``: fully connected layer), no bias.

    Forced weight normalisation (EDM2 Sec. 2.5): on every training forward the stored weight
    is replaced in place by ``normalize(w)``; the weight used is
    ``normalize(w) * gain / sqrt(fan_in)`` so unit-magnitude input gives unit-magnitude output.
    In training (float32 weights) the two normalisations share one reduction: with
    ``d0 = eps + ||w|| / sqrt(m)`` the stored weight becomes ``p = w / d0`` and ``||p|| =
    ||w|| / d0``, so ``normalize(p) = p / (eps + ||w|| / (d0 sqrt(m)))`` (``_NormalizedWeight``).
    """

    EPS = 1e-4

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def used_weight(self, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``normalize(w) * gain / sqrt(fan_in)`` (float32), forcing the normalisation of the
        stored weight first in training mode."""
        fan_in = self.weight[0].numel()
        tensor_gain = isinstance(gain, torch.Tensor)
        scale = (1.0 if tensor_gain else float(gain)) / math.sqrt(fan_in)
        if self.training and self.weight.dtype == torch.float32:
            with torch.no_grad():
                d0 = slice_norms(self.weight, eps=self.EPS)
                self.weight.div_(d0)
                d1 = (d0 - self.EPS) / d0 + self.EPS
            w = _NormalizedWeight.apply(self.weight, d1, scale, self.EPS)
        else:
            w = self.weight.to(torch.float32)
            if self.training:
                with torch.no_grad():
                    self.weight.copy_(normalize(w, eps=self.EPS))
            w = normalize(w, eps=self.EPS) * scale
        return w * gain if tensor_gain else w

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.used_weight(gain).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))
