"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3): power-function EMA math, the tracker,
the Lightning snapshot callback and reconstruction of any EMA length afterwards.

``PowerEMACallback`` is imported on first use so that the math and the reconstruction CLI
do not pull in Lightning.
"""

from __future__ import annotations

from typing import Any

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
    "MAX_SIGMA_REL", "PowerEMA", "PowerEMACallback", "ema_beta", "gamma_to_sigma_rel",
    "power_profile", "profile_error", "profile_inner", "sigma_rel_to_gamma", "solve_coefficients",
]


def __getattr__(name: str) -> Any:
    if name == "PowerEMACallback":
        from autoguide.ema.callback import PowerEMACallback

        return PowerEMACallback
    raise AttributeError(f"module 'autoguide.ema' has no attribute {name!r}")
