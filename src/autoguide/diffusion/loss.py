"""The EDM2 training loss with learned uncertainty weighting.

Karras et al. 2024 (EDM2), Sec. 5 / eq. 21: ``ln sigma ~ N(P_mean, P_std^2)``,
``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``,
``L = lambda / exp(u(sigma)) * ||D(y + n, sigma) - y||^2 + u(sigma)`` per element,
averaged over the batch (and elements).

Where the data distribution is known in closed form (the 2D toy), the regression target ``y``
can be replaced by the exact posterior mean ``E[y | y + n]``: the minimiser is the same
(``E[y | y + n]`` is what the denoiser learns either way), but the target's variance is zero.
Weighted by ``1 / sigma^2`` this is the exact score-matching loss
``sigma^2 ||s_net - grad log p_sigma||^2`` that the autoguidance paper trains its toy models with
(Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", Sec. 3, Fig. 1),
since ``D = x + sigma^2 s``.

``weighting="edm"`` drops the learned uncertainty: ``L = lambda ||D - y||^2`` (Karras et al. 2022,
eq. 2 / Table 1), which for ``sigma << sd`` is that score-matching loss. The learned ``u(sigma)``
equalises the loss across noise levels; where targets are exact and the error concentrates at
low noise (the toy) that moves the gradient to the levels that are already fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

ExactTarget = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
LOSS_WEIGHTINGS = ("learned", "edm")
"""``learned``: EDM2's ``lambda / exp(u) (D - y)^2 + u``; ``edm``: ``lambda (D - y)^2``."""


def sample_sigma(
    n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``n`` noise levels with ``ln sigma ~ N(p_mean, p_std^2)`` (EDM log-normal)."""
    z = torch.randn(n, generator=generator, device=device)
    return (z * p_std + p_mean).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM loss weight ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm2_loss(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    p_mean: float,
    p_std: float,
    generator: torch.Generator | None = None,
    exact_target: ExactTarget | None = None,
    weighting: str = "learned",
) -> torch.Tensor:
    """Mean over batch and elements of ``lambda / exp(u) * (D - y)^2 + u`` (``weighting="learned"``)
    or of ``lambda * (D - y)^2`` (``weighting="edm"``).

    Noise levels and noise come from ``generator`` (on the images' device) so training is
    reproducible from a seed. ``exact_target(x_noisy, sigma, labels)``, when given, replaces
    ``y`` by the exact ``E[y | x_noisy]`` of the data distribution.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: expected one of {LOSS_WEIGHTINGS}")
    n = images.shape[0]
    sigma = sample_sigma(n, p_mean, p_std, generator, images.device)
    noise = torch.randn(images.shape, generator=generator, device=images.device) * sigma.reshape(
        (-1,) + (1,) * (images.ndim - 1)
    )
    noisy = images + noise
    target = images if exact_target is None else exact_target(noisy, sigma, labels)
    denoised, logvar = net(noisy, sigma, labels, return_logvar=True)
    weight = loss_weight(sigma, cast(float, net.sigma_data)).reshape(logvar.shape)
    if weighting == "edm":
        # 0 * u keeps the uncertainty head in the graph with zero gradient: DDP expects every
        # parameter to take part in the loss.
        return (weight * (denoised - target) ** 2).mean() + 0 * logvar.mean()
    per_element = weight / logvar.exp() * (denoised - target) ** 2 + logvar
    return per_element.mean()
