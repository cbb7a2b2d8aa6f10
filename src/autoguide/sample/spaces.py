"""Prediction spaces of the EDM sampler: one denoiser output ``D`` seen as the quantity a rule
was written for (docs/design.md, "Sampling").

At input ``x`` and noise level ``sigma`` (``x = x0 + sigma n``), each space is affine in ``D``:

- ``x0``: ``p = D``, the denoised image (what the sampler's denoiser returns);
- ``eps``: ``p = (x - D) / sigma``, the noise prediction; the EDM ODE's slope
  ``dx/dsigma = (x - D) / sigma`` is this same quantity;
- ``flow``: ``p = (x - (1 + sigma) D) / sigma``, the rectified-flow velocity ``n - x0_hat`` of
  the interpolation ``x_t = (1 - t) x0 + t n``: with ``t = sigma / (1 + sigma)`` the EDM state
  is ``x = (1 + sigma) x_t``, so ``n_hat - D = (x - D) / sigma - D``. It differs from ``eps`` by
  the offset ``D``, not by a factor.

Rules that only combine predictions linearly with weights summing to one give the same ``D``
in every space; rules whose coefficients depend on the predictions (CFG-Zero*'s ``s*``,
MAMBO-G's ratio, TCFG's singular directions) do not, so they name their space.
"""

from __future__ import annotations

import torch

SPACES = ("x0", "eps", "flow")


def check_space(space: str, what: str, allowed: tuple[str, ...] = SPACES) -> str:
    if space not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {space!r}")
    return space


def _coefficients(space: str, sigma: float) -> tuple[float, float]:
    """``(a, b)`` of ``p = a x + b D``."""
    if space == "x0":
        return 0.0, 1.0
    if space == "eps":
        return 1.0 / sigma, -1.0 / sigma
    if space == "flow":
        return 1.0 / sigma, -(1.0 + sigma) / sigma
    raise ValueError(f"unknown prediction space {space!r}; expected one of {', '.join(SPACES)}")


def prediction(space: str, x: torch.Tensor, d: torch.Tensor, sigma: float) -> torch.Tensor:
    """``D`` as the prediction ``p`` of ``space`` at ``(x, sigma)``."""
    a, b = _coefficients(space, float(sigma))
    return b * d if a == 0 else a * x + b * d


def denoised(space: str, x: torch.Tensor, p: torch.Tensor, sigma: float) -> torch.Tensor:
    """The ``D`` whose prediction in ``space`` is ``p``: ``(p - a x) / b``."""
    a, b = _coefficients(space, float(sigma))
    return p / b if a == 0 else (p - a * x) / b
