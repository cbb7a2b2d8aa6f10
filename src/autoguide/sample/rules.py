"""Update rules: how one guidance term turns ``D_pos - D_neg`` into its change of ``D``, for any
negative (docs/design.md, "Sampling").

Plain guidance adds ``c = (w - 1) (D_pos - D_neg)`` per term. A term's ``GuidanceRule`` changes
that, in this order, all in the denoiser (x0) space of the EDM sampler and per image (sums over
all of an image's elements):

1. CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching
   Models"), ``zero_star``: the negative is rescaled by the scale ``s*`` that brings it closest
   to the positive. The paper scales flow velocities ``v = (x_t - x0_hat) / t``; at a shared
   ``x`` and noise level those are, up to the common factor, ``x - D``, so here
   ``s* = <x - D_pos, x - D_neg> / ||x - D_neg||^2`` (it minimises ``||(x - D_pos) - s (x - D_neg)||``)
   and ``D_neg <- x - s* (x - D_neg)``. Its zero-init (the first ``K`` steps output zero
   velocity) becomes ``D = x`` at the first ``K`` noise levels of the schedule
   (``GuidedDenoiser``): the ODE's ``dx/dsigma = (x - D) / sigma`` is then zero.
2. APG (Sadat et al. 2025, "Eliminating Oversaturation and Artifacts of High Guidance Scales in
   Diffusion Models"), ``apg``: with ``delta = D_pos - D_neg``, momentum
   ``delta <- delta + beta * delta_prev`` (``delta_prev`` the previous result of this step, per
   term; one per denoiser evaluation, two per Heun step), the norm threshold
   ``delta <- delta * min(1, r / ||delta||)``, then the split into the part parallel to ``D_pos``
   and the rest: ``delta <- delta_orth + eta * delta_par``.
3. ``c = (w - 1) delta``.
4. Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
   Flawed", eq. 15-16), ``rescale = phi``: with ``D_g = D_pos + c``,
   ``c <- phi * D_g * std(D_pos) / std(D_g) + (1 - phi) * D_g - D_pos`` (one term alone: exactly
   the paper's rule on the x0 prediction).
5. ``cap``: ``c <- c * min(1, cap / rms(c))``, the largest root-mean-square change per element
   one term may make.

Identity cases: ``eta = 1, r = inf, beta = 0`` and ``phi = 0`` and ``cap = inf`` give plain
guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _per_image(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[N, elements]``."""
    return t.reshape(t.shape[0], -1)


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image ``values [N]`` shaped to broadcast over ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def optimized_scale(target: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``s = <target, basis> / ||basis||^2`` per image ``[N]``: the ``s`` minimising
    ``||target - s basis||`` (0 where ``basis`` is 0)."""
    t, b = _per_image(target).double(), _per_image(basis).double()
    norm2 = (b * b).sum(1)
    return torch.where(norm2 > 0, (t * b).sum(1) / norm2.clamp_min(torch.finfo(torch.float64).tiny), 0.0).to(target.dtype)


def zero_star_negative(x: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s negative in x0 space: ``x - s* (x - D_neg)``, ``s* = optimized_scale(x - D_pos, x - D_neg)``."""
    scale = optimized_scale(x - d_pos, x - d_neg)
    return x - _rows(scale, x) * (x - d_neg)


def project(delta: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(parallel, orthogonal)`` parts of ``delta`` with respect to ``direction``, per image."""
    d, u = _per_image(delta).double(), _per_image(direction).double()
    u = u / u.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    parallel = ((d * u).sum(1, keepdim=True) * u).reshape(delta.shape).to(delta.dtype)
    return parallel, delta - parallel


def norm_threshold(delta: torch.Tensor, r: float) -> torch.Tensor:
    """``delta * min(1, r / ||delta||)`` per image."""
    if math.isinf(r):
        return delta
    norm = _per_image(delta).norm(dim=1)
    return delta * _rows(torch.clamp(r / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0), delta)


def rescaled(guided: torch.Tensor, d_pos: torch.Tensor, phi: float) -> torch.Tensor:
    """``phi * guided * std(D_pos) / std(guided) + (1 - phi) * guided``, stds per image."""
    ratio = _per_image(d_pos).std(dim=1) / _per_image(guided).std(dim=1).clamp_min(torch.finfo(guided.dtype).tiny)
    return phi * guided * _rows(ratio, guided) + (1 - phi) * guided


def capped(change: torch.Tensor, cap: float) -> torch.Tensor:
    """``change * min(1, cap / rms(change))`` per image."""
    if math.isinf(cap):
        return change
    rms = _per_image(change).square().mean(dim=1).sqrt()
    return change * _rows(torch.clamp(cap / rms.clamp_min(torch.finfo(rms.dtype).tiny), max=1.0), change)


@dataclass(frozen=True)
class APG:
    """Adaptive projected guidance: parallel weight ``eta``, norm threshold ``r`` (``inf``: none),
    momentum ``beta`` (the paper uses negative values, e.g. -0.5)."""

    eta: float = 0.0
    r: float = math.inf
    beta: float = 0.0

    def __post_init__(self) -> None:
        for name in ("eta", "beta"):
            object.__setattr__(self, name, float(getattr(self, name)))
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"apg.{name} must be finite, got {getattr(self, name)}")
        object.__setattr__(self, "r", float(self.r))
        if not self.r > 0:
            raise ValueError(f"apg.r must be > 0 (inf: no threshold), got {self.r}")

    def __call__(self, delta: torch.Tensor, d_pos: torch.Tensor) -> torch.Tensor:
        """Threshold and projection of ``delta`` (after ``momentum``): ``orth + eta * par``."""
        parallel, orthogonal = project(norm_threshold(delta, self.r), d_pos)
        return orthogonal + self.eta * parallel

    def momentum(self, delta: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """``delta + beta * previous`` (``delta`` alone at the first evaluation)."""
        return delta if previous is None or self.beta == 0 else delta + self.beta * previous


@dataclass(frozen=True)
class ZeroStar:
    """CFG-Zero*: ``scale`` the negative by the optimised ``s*``; ``zero_levels``: ``D = x`` at the
    first that many noise levels of the schedule."""

    scale: bool = True
    zero_levels: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.zero_levels, int) and self.zero_levels >= 0):
            raise ValueError(f"zero_star.zero_levels must be an integer >= 0, got {self.zero_levels!r}")


@dataclass(frozen=True)
class GuidanceRule:
    """How a term applies ``D_pos - D_neg`` (module docstring); the default is plain guidance."""

    apg: APG | None = None
    zero_star: ZeroStar | None = None
    rescale: float = 0.0
    cap: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "rescale", float(self.rescale))
        object.__setattr__(self, "cap", float(self.cap))
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"rescale (phi) must be in [0, 1], got {self.rescale}")
        if not self.cap > 0:
            raise ValueError(f"cap must be > 0 (inf: none), got {self.cap}")

    def change(
        self, weight: float, x: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The term's change of ``D``; ``state`` carries this term's APG momentum between
        evaluations."""
        if self.zero_star is not None and self.zero_star.scale:
            d_neg = zero_star_negative(x, d_pos, d_neg)
        delta = d_pos - d_neg
        if self.apg is not None:
            delta = self.apg.momentum(delta, state.get("apg"))
            state["apg"] = delta
            delta = self.apg(delta, d_pos)
        change = (weight - 1) * delta
        if self.rescale:
            change = rescaled(d_pos + change, d_pos, self.rescale) - d_pos
        return capped(change, self.cap)
