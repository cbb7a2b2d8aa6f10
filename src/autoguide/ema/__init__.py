"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3): power-function EMA math, the tracker,
the Lightning snapshot callback, and "the EMA of length s at time t of run R" rebuilt from the
snapshots (``PosthocEMA``, into memory or to files, cached).

``PowerEMACallback`` is imported on first use so that the math and the reconstruction do not
pull in Lightning.
"""

from __future__ import annotations

from autoguide.core.lazy import lazy_getattr
from autoguide.ema.posthoc import PosthocEMA, reconstruct
from autoguide.ema.power import (
    MAX_SIGMA_REL,
    ema_beta,
    gamma_to_sigma_rel,
    power_profile,
    profile_error,
    profile_inner,
    sigma_rel_to_gamma,
    solve_coefficients,
)
from autoguide.ema.tracker import PowerEMA

__all__ = [
    "MAX_SIGMA_REL",
    "PosthocEMA",
    "PowerEMA",
    "PowerEMACallback",
    "ema_beta",
    "gamma_to_sigma_rel",
    "power_profile",
    "profile_error",
    "profile_inner",
    "reconstruct",
    "sigma_rel_to_gamma",
    "solve_coefficients",
]

__getattr__ = lazy_getattr(__name__, {"PowerEMACallback": "callback"})
