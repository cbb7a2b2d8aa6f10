"""Rules that change a term's weight ``w`` (Karras convention, ``D = D_neg + w (D_pos - D_neg)``)
with the noise level, the predictions or the sample's own trajectory (docs/design.md, "Sampling").
``autoguide.sample.rules.GuidanceRule`` applies them in this order:

1. ``schedule`` (``WeightSchedule``; weight schedulers as in Wang et al. 2024, "Analysis of
   Classifier-Free Guidance Weight Schedulers", here over the noise level): the guidance
   strength ``w - 1`` times a factor ``f(sigma)`` that ramps from ``start`` at ``sigma_start``
   to ``end`` at ``sigma_end`` in ``u = clip((ln sigma_start - ln sigma) / (ln sigma_start -
   ln sigma_end), 0, 1)``: ``constant`` ``f = start``; ``linear`` ``f = start + (end - start) u``;
   ``cosine`` ``f = end + (start - end) (1 + cos(pi u)) / 2``. The term's interval still turns
   it off outside ``(sigma_lo, sigma_hi]``.
2. ``fbg`` (``Feedback``; Koulischer et al. 2025, "Feedback Guidance of Diffusion Models",
   FBG): a per-image weight from the running estimate ``l`` of the log posterior ratio
   ``log p(c | x) / p(c)``, ``lambda = e^l / (e^l - (1 - pi))``, added to the term's own weight
   as the paper's hybrid: ``w <- w + lambda - 1`` (``w = 1``: FBG alone). ``l = 0`` at the start;
   after each sampler step from ``(x, sigma)`` to ``(x', sigma')`` with the predictions
   ``D_pos, D_neg`` of the step's first evaluation (at ``x``):
   ``mu_c = (sigma'^2 / sigma^2) x + (1 - sigma'^2 / sigma^2) D_c`` for ``c`` in pos/neg,
   ``s^2 = (sigma^2 - sigma'^2) sigma'^2 / sigma^2``,
   ``l <- clip(l - tau / (2 s^2) (||x' - mu_pos||^2 - ||x' - mu_neg||^2) + delta, l_min, 3)``
   with ``l_min = ln((1 - pi) lambda_max / (lambda_max - 1))`` (so ``lambda <= lambda_max``).
   Temperature ``tau = temp`` and offset ``delta = offset`` as in the paper's Eq. for the
   posterior update; the paper derives them from ``t_0, t_1`` and the step count (docs/design.md).
   The weight is held for both evaluations of a Heun step, as in the paper.
3. ``mambo`` (``MamboG``; MAMBO-G, "Magnitude-Aware Mitigation for Boosted Guidance", 2025;
   diffusers' MagnitudeAwareGuidance): ``w <- 1 + (w - 1) exp(-alpha r)`` with
   ``r = ||p_pos - p_neg|| / ||p_neg||`` per image, ``p`` the predictions in ``space``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from autoguide.sample.spaces import check_space, prediction

SHAPES = ("constant", "linear", "cosine")


def _finite(owner: object, *names: str, what: str) -> None:
    for name in names:
        value = float(getattr(owner, name))
        if not math.isfinite(value):
            raise ValueError(f"{what}.{name} must be finite, got {value}")
        object.__setattr__(owner, name, value)


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


@dataclass(frozen=True)
class WeightSchedule:
    """``w(sigma) = 1 + f(sigma) (w - 1)`` (module docstring, 1)."""

    shape: str = "constant"
    start: float = 1.0
    end: float = 1.0
    sigma_start: float = 80.0
    sigma_end: float = 0.002

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"schedule.shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        _finite(self, "start", "end", "sigma_start", "sigma_end", what="schedule")
        if not self.sigma_start > self.sigma_end > 0:
            raise ValueError(f"schedule: need sigma_start > sigma_end > 0, got {self.sigma_start} and {self.sigma_end}")

    def factor(self, sigma: float) -> float:
        """``f(sigma)``."""
        if self.shape == "constant":
            return self.start
        u = (math.log(self.sigma_start) - math.log(sigma)) / (math.log(self.sigma_start) - math.log(self.sigma_end))
        u = min(max(u, 0.0), 1.0)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * u
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * u)) / 2


@dataclass(frozen=True)
class MamboG:
    """MAMBO-G: ``w - 1`` shrunk by ``exp(-alpha ||p_pos - p_neg|| / ||p_neg||)`` (module docstring, 3)."""

    alpha: float = 8.0
    space: str = "flow"

    def __post_init__(self) -> None:
        _finite(self, "alpha", what="mambo")
        if self.alpha < 0:
            raise ValueError(f"mambo.alpha must be >= 0, got {self.alpha}")
        check_space(self.space, "mambo.space")

    def factor(self, x: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor, sigma: float) -> torch.Tensor:
        """``exp(-alpha r)`` per image ``[N]``."""
        p_pos, p_neg = prediction(self.space, x, d_pos, sigma), prediction(self.space, x, d_neg, sigma)
        ratio = _norms(p_pos - p_neg) / _norms(p_neg).clamp_min(torch.finfo(x.dtype).tiny)
        return torch.exp(-self.alpha * ratio)


@dataclass(frozen=True)
class Feedback:
    """FBG: the weight ``lambda = e^l / (e^l - (1 - pi))`` from the running log posterior ratio
    ``l`` (module docstring, 2); ``max_weight`` caps ``lambda``."""

    pi: float = 0.5
    temp: float = 0.1
    offset: float = -0.01
    max_weight: float = 10.0

    def __post_init__(self) -> None:
        _finite(self, "pi", "temp", "offset", "max_weight", what="fbg")
        if not 0 < self.pi < 1:
            raise ValueError(f"fbg.pi must be in (0, 1), got {self.pi}")
        if self.temp < 0:
            raise ValueError(f"fbg.temp must be >= 0, got {self.temp}")
        if not self.max_weight > 1:
            raise ValueError(f"fbg.max_weight must be > 1, got {self.max_weight}")

    @property
    def min_log_posterior(self) -> float:
        """``l_min = ln((1 - pi) lambda_max / (lambda_max - 1))``."""
        return math.log((1 - self.pi) * self.max_weight / (self.max_weight - 1))

    def weight(self, log_posterior: torch.Tensor) -> torch.Tensor:
        """``lambda = e^l / (e^l - (1 - pi))`` per image."""
        ratio = torch.exp(log_posterior)
        return ratio / (ratio - (1 - self.pi))

    def update(
        self,
        log_posterior: torch.Tensor,
        x: torch.Tensor,
        sigma: float,
        x_next: torch.Tensor,
        sigma_next: float,
        d_pos: torch.Tensor,
        d_neg: torch.Tensor,
    ) -> torch.Tensor:
        """``l`` after the step ``(x, sigma) -> (x_next, sigma_next)`` (``l`` itself at ``sigma_next = 0``)."""
        if sigma_next <= 0:
            return log_posterior
        keep = sigma_next**2 / sigma**2
        variance = (sigma**2 - sigma_next**2) * keep
        means = (keep * x + (1 - keep) * d for d in (d_pos, d_neg))
        errors = [(x_next - mean).reshape(x.shape[0], -1).square().sum(1) for mean in means]
        updated = log_posterior - self.temp / (2 * variance) * (errors[0] - errors[1]) + self.offset
        return updated.clamp(self.min_log_posterior, 3.0)


def feedback_from_times(
    pi: float,
    t0: float,
    t1: float,
    sigma_steps: list[float],
    max_weight: float = 10.0,
    weight_ref: float = 3.0,
    alpha: float = 10.0,
) -> Feedback:
    """FBG's offset and temperature from the paper's times ``t0``, ``t1`` (fractions of the
    ``N`` sampler steps counted from the end, 0 = clean): ``delta = ln((1 - pi) lambda_ref /
    (lambda_ref - 1)) / ((1 - t0) N)`` (the offset alone takes ``lambda`` from ``1 / pi`` to
    ``lambda_ref`` by ``t0``) and ``tau = |2 s^2(t1) delta / alpha|`` with ``s^2(t1)`` the step
    variance ``(sigma_i^2 - sigma_{i+1}^2) sigma_{i+1}^2 / sigma_i^2`` interpolated at position
    ``t1 N`` of the steps counted from the end. ``sigma_steps``: the sampler's levels, final 0 included."""
    levels = [float(s) for s in sigma_steps if s > 0]
    n = len(levels)
    variances = [0.0] * n  # index j: the j-th step from the end (0: the final step to sigma 0)
    for i, (s, s_next) in enumerate(itertools.pairwise(levels)):
        variances[n - i - 1] = (s**2 - s_next**2) * s_next**2 / s**2
    offset = math.log((1 - pi) * weight_ref / (weight_ref - 1)) / ((1 - t0) * n)
    lower, frac = math.floor(t1 * n), t1 * n - math.floor(t1 * n)
    variance = (1 - frac) * variances[lower] + frac * variances[min(lower + 1, n - 1)]
    return Feedback(pi=pi, temp=abs(2 * variance * offset / alpha), offset=offset, max_weight=max_weight)
