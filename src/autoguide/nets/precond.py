"""EDM preconditioning with the learned uncertainty head of EDM2.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models",
Table 1) and EDM2 (Karras et al. 2024, Sec. 5 and eq. 21):
``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` with
``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``,
``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = ln(s) / 4``; the uncertainty
``u(sigma) = logvar_linear(logvar_fourier(c_noise))`` weights the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from autoguide.nets.conv import MPConv
from autoguide.nets.mlp import MLP
from autoguide.nets.mp import MPFourier
from autoguide.nets.unet import AttentionOp, Block


def precond_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """``(c_skip, c_out, c_in, c_noise)`` of EDM for noise level ``sigma``."""
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1 / var.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class Precond(nn.Module):
    """A denoiser ``D(x, sigma, labels) -> x0_hat`` around a backbone ``F(x, c_noise, labels)``.

    The backbone is registered under ``backbone_name`` (``unet`` for the EDM2 UNet, keeping the
    reference state-dict names). ``labels`` is one-hot ``[N, label_dim]``; ``None`` with a
    conditional model means the null label (all zeros), as used by CFG.
    """

    card: dict[str, Any]
    """The model card, on a network read from a model file (``io.load_denoiser``)."""

    def __init__(
        self,
        backbone: nn.Module,
        backbone_name: str,
        config: Mapping[str, Any],
        label_dim: int,
        img_channels: int,
        img_resolution: int,
        sigma_data: float = 0.5,
        logvar_channels: int = 128,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone_name
        setattr(self, backbone_name, backbone)
        self.config = dict(config)
        self.label_dim = label_dim
        self.img_channels = img_channels
        self.img_resolution = img_resolution
        self.sigma_data = sigma_data
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_name)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        labels: torch.Tensor | None = None,
        return_logvar: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        if self.label_dim:
            if labels is None:
                labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
            labels = labels.to(torch.float32).reshape(x.shape[0], self.label_dim)
        else:
            labels = None
        c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (x.ndim - 1)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else torch.float32
        f_x = self.backbone((c_in.reshape(shape) * x).to(dtype), c_noise, labels)
        d_x = c_skip.reshape(shape) * x + c_out.reshape(shape) * f_x.to(torch.float32)
        if not return_logvar:
            return d_x
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(shape)
        return d_x, logvar.to(torch.float32)

    def blocks(self) -> dict[str, nn.Module]:
        """Every residual block in forward order by name, each with the hook points of
        ``nets.hooks``: the UNet's ``enc.16x16_block0`` ... ``dec.8x8_in0`` ... (``enc.``/``dec.``
        + the reference key), the MLP's ``block0`` ... ``block<depth-1>``."""
        backbone = self.backbone
        if isinstance(backbone, MLP):
            return {f"block{i}": block for i, block in enumerate(backbone.blocks)}
        return {
            f"{part}.{name}": block
            for part in ("enc", "dec")
            for name, block in getattr(backbone, part).items()
            if isinstance(block, Block)
        }

    def attention_ops(self) -> dict[str, AttentionOp]:
        """Every self-attention op by block name, e.g. ``{"dec.16x16_block1": op, ...}``."""
        return {
            name: block.attn_op for name, block in self.blocks().items() if isinstance(block, Block) and block.num_heads
        }
