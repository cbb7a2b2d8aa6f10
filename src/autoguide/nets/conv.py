"""The magnitude-preserving convolution of EDM2 with forced weight normalisation.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"
(EDM2), Sec. 2.5: the stored weight is normalised in place on every training step and the
weight used is normalised again, so the effective learning rate does not drift with its norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autoguide.nets.fused import Fusable, Gain, NormalizedWeight
from autoguide.nets.mp import normalize, slice_norms


class MPConv(Fusable):
    """Magnitude-preserving convolution (``kernel=()``: fully connected layer), no bias.

    Forced weight normalisation (EDM2 Sec. 2.5): on every training forward the stored weight
    is replaced in place by ``normalize(w)``; the weight used is
    ``normalize(w) * gain / sqrt(fan_in)`` so unit-magnitude input gives unit-magnitude output.
    Fused (``nets.fused``, weights of at least float32 precision): the two normalisations share
    one reduction. With ``d0 = eps + ||w|| / sqrt(m)`` the stored weight becomes ``p = w / d0``
    and ``||p|| = ||w|| / d0``, so ``normalize(p) = p / (eps + ||w|| / (d0 sqrt(m)))``
    (``NormalizedWeight``).
    """

    EPS = 1e-4

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def used_weight(self, gain: Gain = 1.0) -> torch.Tensor:
        """``normalize(w) * gain / sqrt(fan_in)`` (float32 or wider), forcing the normalisation
        of the stored weight first in training mode."""
        fan_in = self.weight[0].numel()
        if isinstance(gain, torch.Tensor):
            return self.used_weight() * gain
        scale = float(gain) / math.sqrt(fan_in)
        if self.fused and self.training and torch.finfo(self.weight.dtype).bits >= 32:
            with torch.no_grad():
                d0 = slice_norms(self.weight, eps=self.EPS)
                self.weight.div_(d0.to(self.weight.dtype))
                d1 = (d0 - self.EPS) / d0 + self.EPS
            return NormalizedWeight.apply(self.weight, d1.to(self.weight.dtype), scale, self.EPS)
        w = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w, eps=self.EPS))
        return normalize(w, eps=self.EPS) * scale

    def forward(self, x: torch.Tensor, gain: Gain = 1.0) -> torch.Tensor:
        w = self.used_weight(gain).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))
