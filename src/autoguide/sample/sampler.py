"""The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2): an ODE solver over a denoiser ``D(x, sigma)``.

Noise levels ``sigma_0 > ... > sigma_{N-1} > sigma_N = 0`` from
``autoguide.diffusion.edm_sigma_steps``. Starting from ``x_0 = sigma_0 * noise``, each step ``i``:
- churn: ``gamma = min(S_churn / N, sqrt(2) - 1)`` if ``S_min <= sigma_i <= S_max`` else 0,
  ``sigma_hat = (1 + gamma) sigma_i``, ``x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps``;
- Euler: ``d = (x_hat - D(x_hat, sigma_hat)) / sigma_hat``,
  ``x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d``;
- Heun (``solver="heun"``, not on the last step where ``sigma_{i+1} = 0``):
  ``d' = (x_{i+1} - D(x_{i+1}, sigma_{i+1})) / sigma_{i+1}``,
  ``x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2``.
The state is kept in float64. ``D`` is any callable ``denoise(x, sigma)`` (as in k-diffusion's
and EDM's samplers): a network, or the guided denoiser ``autoguide.sample.GuidedDenoiser`` (so
guidance applies at both evaluations of a Heun step); a denoiser with an ``end_step(x_hat,
sigma_hat, x_next, sigma_next)`` method is told after each step (the guided denoiser's per-step
rules). The churn noise ``eps`` comes from each
image's ``churn`` stream (``streams``, see ``autoguide.sample.seeds``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from autoguide.diffusion import edm_sigma_steps
from autoguide.sample.sampler_settings import SamplerSettings
from autoguide.sample.seeds import SeedStreams

CHURN_STREAM = "churn"
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


@torch.no_grad()
def edm_sampler(
    denoise: Denoiser, noise: torch.Tensor, settings: SamplerSettings | None = None, streams: SeedStreams | None = None
) -> torch.Tensor:
    """Sample ``x`` (in ``noise``'s dtype) from unit-variance ``noise [N, ...]`` by integrating
    ``denoise(x, sigma)`` as ``settings`` say (default: EDM's Heun sampler); ``streams``, the
    images' random streams, are needed for churn."""
    settings = settings or SamplerSettings()
    if settings.S_churn > 0 and streams is None:
        raise ValueError("S_churn > 0 draws per-image noise: pass the images' seeds (their SeedStreams)")
    if streams is not None and len(streams) != noise.shape[0]:
        raise ValueError(f"got {len(streams)} seeds for {noise.shape[0]} noise images")
    t_steps = edm_sigma_steps(settings.num_steps, settings.sigma_min, settings.sigma_max, settings.rho).tolist()
    x_next = noise.to(torch.float64) * t_steps[0]
    end_step = getattr(denoise, "end_step", None)
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
        x_cur = x_next
        gamma = settings.churn_gamma(t_cur)
        t_hat = t_cur + gamma * t_cur
        if gamma > 0 and streams is not None:  # churn needs the streams (checked above)
            eps = streams.randn(CHURN_STREAM, x_cur.shape[1:], device=x_cur.device).to(torch.float64)
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * settings.S_noise * eps
        else:
            x_hat = x_cur
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if settings.solver == "heun" and i < settings.num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if end_step is not None:
            end_step(x_hat, t_hat, x_next, t_next)
    return x_next.to(noise.dtype)
