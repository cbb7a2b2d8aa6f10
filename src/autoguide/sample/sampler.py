"""The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2) with guidance terms.

Noise levels ``sigma_0 > ... > sigma_{N-1} > sigma_N = 0`` from
``autoguide.diffusion.edm_sigma_steps``. Starting from ``x_0 = sigma_0 * noise``, each step ``i``:
- churn: ``gamma = min(S_churn / N, sqrt(2) - 1)`` if ``S_min <= sigma_i <= S_max`` else 0,
  ``sigma_hat = (1 + gamma) sigma_i``, ``x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps``;
- Euler: ``d = (x_hat - D(x_hat, sigma_hat)) / sigma_hat``,
  ``x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d``;
- Heun (``solver="heun"``, not on the last step where ``sigma_{i+1} = 0``):
  ``d' = (x_{i+1} - D(x_{i+1}, sigma_{i+1})) / sigma_{i+1}``,
  ``x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2``.
``D`` is the guided denoiser, so guidance applies at both evaluations of a Heun step. The
state is kept in float64; the networks run in fp32 or, with ``precision="bf16"``, under bf16
autocast. The churn noise ``eps`` comes from each image's ``churn`` stream (``seeds``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from autoguide.diffusion import edm_sigma_steps
from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.labels import as_one_hot
from autoguide.sample.seeds import SeedStreams

CHURN_STREAM = "churn"
SOLVERS = ("heun", "euler")


@torch.no_grad()
def edm_sampler(
    net: nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | None = None,
    guidance: Sequence[GuidanceTerm] = (),
    *,
    seeds: Sequence[int] | None = None,
    num_steps: int = 32,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    solver: str = "heun",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    precision: str = "fp32",
) -> torch.Tensor:
    """Sample ``x`` (float32, like ``noise``) from unit-variance ``noise [N, ...]``.

    ``labels``: class indices ``[N]``, one-hot ``[N, label_dim]`` or ``None``; ``guidance``:
    terms from ``autoguide.sample.guidance``; ``seeds``: the images' seeds, needed when
    anything else is random (churn, ICG, TSG).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    n = noise.shape[0]
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} noise images")
    streams = SeedStreams(seeds) if seeds is not None else None
    if S_churn > 0 and streams is None:
        raise ValueError("S_churn > 0 draws per-image noise: pass the images' seeds")
    one_hot = as_one_hot(labels, int(getattr(net, "label_dim", 0)), n)
    if one_hot is not None:
        one_hot = one_hot.to(noise.device)
    denoise = GuidedDenoiser(net, guidance, one_hot, streams, precision)

    t_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho).tolist()
    x_next = noise.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_churn > 0 and S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = streams.randn(CHURN_STREAM, x_cur.shape[1:], device=x_cur.device).to(torch.float64)
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * S_noise * eps
        else:
            x_hat = x_cur
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if solver == "heun" and i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(noise.dtype)
