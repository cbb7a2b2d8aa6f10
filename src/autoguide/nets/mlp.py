"""A small magnitude-preserving MLP backbone for low-dimensional data (the 2D toy).

Same building blocks as the EDM2 UNet (Karras et al. 2024) so that the toy experiment of the
autoguidance paper (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of
Itself", Sec. 3 / Fig. 1) trains with the same loss and EMA machinery: residual MLP blocks
``x = mp_sum(x, lin1(mp_silu(lin0(mp_silu(x)) * (emb_linear(emb, emb_gain) + 1))), 0.3)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoguide.nets.conv import MPConv
from autoguide.nets.hooks import HookPoint
from autoguide.nets.mp import MPFourier, mp_silu, mp_sum


class MLPBlock(nn.Module):
    """Residual MP block on feature vectors, modulated by the embedding."""

    def __init__(self, width: int, emb_channels: int, res_balance: float = 0.3) -> None:
        super().__init__()
        self.res_balance = res_balance
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.lin0 = MPConv(width, width, kernel=[])
        self.emb_linear = MPConv(emb_channels, width, kernel=[])
        self.lin1 = MPConv(width, width, kernel=[])
        self.branch_point = HookPoint()  # (y) -> y: the residual branch (nets.hooks)
        self.output_point = HookPoint()  # (x, output) -> output (nets.hooks)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        y = self.branch_point(mp_silu(self.lin0(mp_silu(x)) * (self.emb_linear(emb, gain=self.emb_gain) + 1)))
        return self.output_point(x, mp_sum(x, self.lin1(y), t=self.res_balance))


class MLP(nn.Module):
    """``F(x, c_noise, labels)`` for ``x`` of shape ``[N, dim]``."""

    def __init__(self, dim: int, label_dim: int, width: int = 64, depth: int = 4, label_balance: float = 0.5) -> None:
        super().__init__()
        self.label_balance = label_balance
        self.emb_fourier = MPFourier(width)
        self.emb_noise = MPConv(width, width, kernel=[])
        self.emb_label = MPConv(label_dim, width, kernel=[]) if label_dim else None
        self.lin_in = MPConv(dim + 1, width, kernel=[])
        self.blocks = nn.ModuleList(MLPBlock(width, width) for _ in range(depth))
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.lin_out = MPConv(width, dim, kernel=[])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if class_labels is None:
                raise ValueError("this MLP is class-conditional (label_dim > 0): class_labels are required")
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = self.lin_in(torch.cat([x, torch.ones_like(x[:, :1])], dim=1))
        for block in self.blocks:
            x = block(x, emb)
        return self.lin_out(x, gain=self.out_gain)
