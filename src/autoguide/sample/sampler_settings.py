"""The EDM sampler's settings (the ``sampler`` config group), checked once.

EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Algorithm 2 and Table 1): ``num_steps`` noise levels
``sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho`` then 0; Heun's 2nd
order (Euler on the last step) or Euler; stochastic churn ``S_churn`` on levels in
``[S_min, S_max]`` with noise scaled by ``S_noise``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from autoguide.core.typed_settings import ConfigError, choice, number, positive_int

SOLVERS = ("heun", "euler")


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """How ``autoguide.sample.edm_sampler`` integrates (defaults: EDM's deterministic Heun
    sampler with 32 levels from 80 to 0.002, rho 7); ``compile``: run the networks through
    ``torch.compile`` (``autoguide.nets.compile_network``) when generating."""

    num_steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    solver: str = "heun"
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0
    compile: bool = False

    def __post_init__(self) -> None:
        positive_int(self.num_steps, "sampler.num_steps")
        number(self.sigma_min, "sampler.sigma_min", 0, low_open=True)
        number(
            self.sigma_max,
            "sampler.sigma_max",
            self.sigma_min,
            low_open=True,
            expected=f"a number above sampler.sigma_min={self.sigma_min}",
        )
        number(self.rho, "sampler.rho", 0, low_open=True)
        choice(self.solver, "sampler.solver", SOLVERS)
        number(self.S_churn, "sampler.S_churn", 0)
        number(self.S_noise, "sampler.S_noise", 0)
        if not (self.S_min >= 0 and self.S_max >= self.S_min):
            raise ConfigError(f"sampler.S_min={self.S_min}, sampler.S_max={self.S_max}: expected 0 <= S_min <= S_max")

    def churn_gamma(self, sigma: float) -> float:
        """``gamma_i = min(S_churn / N, sqrt(2) - 1)`` if ``S_min <= sigma <= S_max``, else 0."""
        if self.S_churn > 0 and self.S_min <= sigma <= self.S_max:
            return min(self.S_churn / self.num_steps, math.sqrt(2) - 1)
        return 0.0


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """How the apps generate images besides the models, seeds and labels: the sampler, images
    per batch, the networks' precision (``bf16``: autocast, meant for CUDA) and a progress bar."""

    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    batch_size: int = 64
    precision: str = "fp32"
    progress: bool = False

    def __post_init__(self) -> None:
        positive_int(self.batch_size, "batch_size")
        choice(self.precision, "precision", PRECISIONS)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``autoguide.sample.generate_images`` these settings give."""
        return {
            "sampler": self.sampler,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "progress": self.progress,
        }
