"""Learning-rate schedule and sampler noise levels, all counted in images.

EDM2 (Karras et al. 2024), Sec. 2.5 / eq. 13: inverse square-root decay
``alpha(t) = alpha_ref / sqrt(max(t / t_ref, 1))`` with ``t`` in training iterations of
``batch`` images, i.e. ``t / t_ref = nimg / (t_ref * batch)``; linear warm-up over the first
``rampup_img`` images. EDM (Karras et al. 2022), eq. 5: the sampler's sigma grid.
"""

from __future__ import annotations

import torch

from autoguide.core.units import MI


def learning_rate(
    nimg: float, ref_lr: float, ref_batches: float, batch_size: int, rampup_img: float = 10 * MI
) -> float:
    """``ref_lr / sqrt(max(nimg / (ref_batches * batch_size), 1)) * min(nimg / rampup_img, 1)``.

    ``ref_batches = 0`` disables the decay; ``rampup_img = 0`` disables the warm-up.
    """
    lr = ref_lr
    if ref_batches > 0:
        lr /= max(nimg / (ref_batches * batch_size), 1.0) ** 0.5
    if rampup_img > 0:
        lr *= min(nimg / rampup_img, 1.0)
    return lr


def edm_sigma_steps(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """EDM grid ``sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho``, then 0.

    Returns ``num_steps + 1`` float64 values, decreasing from ``sigma_max`` to ``sigma_min``
    with a final 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    frac = i / max(num_steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])
