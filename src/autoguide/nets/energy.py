"""A denoiser defined through a learned log-density, for low-dimensional data (the 2D toy).

The toy models of the autoguidance paper (Karras et al. 2024, "Guiding a Diffusion Model with a
Bad Version of Itself", Sec. 3 and Appendix) learn a scalar unnormalised log-density and take its
gradient as the score, so that the learned score field is conservative:

    x~ = x / sqrt(sigma^2 + sd^2)
    y  = MLP([x~, ln(sigma) / 4, 1, c])                (magnitude-preserving layers, EDM2)
    log p(x; sigma, c) = g * mean_j(y_j^2) / sigma - |x~|^2 / 2
    D(x; sigma, c)     = x + sigma^2 grad_x log p(x; sigma, c)                  (Tweedie)

With the learned gain ``g = 0`` at initialisation the density is the Gaussian N(0, (sigma^2 + sd^2) I)
and ``D`` is the EDM skip connection ``sd^2 / (sigma^2 + sd^2) x``. ``c`` is the one-hot label
scaled by ``sqrt(label_dim)`` (unit magnitude; all zeros = the null label), absent when
``label_dim = 0``. The EDM2 uncertainty head ``u(sigma)`` is the same as :class:`Precond`'s, so the
model trains with either loss weighting of ``autoguide.diffusion.loss`` (``train.loss_weighting``).

The score is obtained by automatic differentiation, also under ``torch.no_grad`` / inference mode
(sampling); during training the gradient graph is kept (``create_graph``) so that the loss can be
differentiated through it. Computed in float32 regardless of autocast (float64 inputs in float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from autoguide.nets.conv import MPConv
from autoguide.nets.hooks import LayerPoints
from autoguide.nets.mp import MPFourier, mp_silu


class EnergyDenoiser(nn.Module):
    """``D(x, sigma, labels) -> x0_hat`` for ``x`` [N, dim] from the log-density described above;
    same call signature and attributes as :class:`autoguide.nets.precond.Precond`."""

    card: dict[str, Any]
    """The model card, on a network read from a model file (``io.load_denoiser``)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        img_channels: int,
        label_dim: int,
        width: int = 64,
        depth: int = 4,
        sigma_data: float = 0.5,
        logvar_channels: int = 128,
    ) -> None:
        super().__init__()
        self.config = dict(config)
        self.img_channels = img_channels
        self.img_resolution = 0
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.layers = nn.ModuleList([MPConv(img_channels + 2 + label_dim, width, kernel=[])])
        self.layers.extend(MPConv(width, width, kernel=[]) for _ in range(depth))
        self.points = nn.ModuleList(LayerPoints() for _ in range(depth))  # hidden layers 1..depth (nets.hooks)
        self.gain = nn.Parameter(torch.zeros([]))
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def _inputs(
        self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``x`` [N, dim] and ``sigma`` [N] in float32 (float64 stays float64, for exact checks),
        labels [N, label_dim] (zeros for None) or None."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(dtype).reshape(x.shape[0], -1)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        if not self.label_dim:
            return x, sigma, None
        if labels is None:
            labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
        return x, sigma, labels.to(dtype).reshape(x.shape[0], self.label_dim)

    def _log_density(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``log p(x; sigma, c)`` [N] up to a constant per ``(sigma, c)``; inputs from :meth:`_inputs`."""
        scaled = x / (sigma**2 + self.sigma_data**2).sqrt()[:, None]
        parts = [scaled, sigma.log()[:, None] / 4, torch.ones_like(sigma)[:, None]]
        if labels is not None:
            parts.append(labels * math.sqrt(self.label_dim))
        y = self.layers[0](torch.cat(parts, dim=1))
        for layer, points in zip(self.layers[1:], self.blocks().values(), strict=True):
            y = points.output_point(y, points.branch_point(layer(mp_silu(y))))
        return y.square().mean(1) * self.gain / sigma - 0.5 * scaled.square().sum(1)

    def blocks(self) -> dict[str, LayerPoints]:
        """The hook points of every hidden layer by name (``layer1`` ... ``layer<depth>``): its
        branch is the layer's output, its skip path the layer's input ``y`` (same width)."""
        return {f"layer{i}": points for i, points in enumerate(self.points, start=1) if isinstance(points, LayerPoints)}

    def log_density(
        self, x: torch.Tensor, sigma: float | torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The learned unnormalised ``log p(x; sigma, c)`` [N] (for plots and diagnostics)."""
        with torch.autocast(x.device.type, enabled=False):
            return self._log_density(*self._inputs(x, sigma, labels))

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        labels: torch.Tensor | None = None,
        return_logvar: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        keep_graph = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            # Inference-mode tensors cannot enter autograd: clone them outside inference mode.
            flat, sigmas, label_rows = self._inputs(x, sigma, labels)
            flat, sigmas = _outside_inference(flat), _outside_inference(sigmas)
            label_rows = _outside_inference(label_rows) if label_rows is not None else None
            point = flat if keep_graph and flat.requires_grad else flat.detach().requires_grad_(True)
            log_p = self._log_density(point, sigmas, label_rows)
            (score,) = torch.autograd.grad(log_p.sum(), point, create_graph=keep_graph)
            denoised = flat + sigmas[:, None] ** 2 * score
            if not keep_graph:
                denoised = denoised.detach()
            if return_logvar:
                logvar = self.logvar_linear(self.logvar_fourier(sigmas.log() / 4)).reshape(-1, 1)
        denoised = denoised.reshape(shape)
        return (denoised, logvar) if return_logvar else denoised


def _outside_inference(t: torch.Tensor) -> torch.Tensor:
    """``t``, cloned if it is an inference-mode tensor (those cannot enter autograd)."""
    return t.clone() if t.is_inference() else t
