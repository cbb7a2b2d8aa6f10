"""Plot target and reconstructed post-hoc EMA profiles (as in EDM2, Fig. 3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoguide.core.units import KIMG, MI
from autoguide.ema.power import power_profile, sigma_rel_to_gamma
from autoguide.io import atomic_path


def plot_profiles(
    path: Path,
    in_nimg: Sequence[float],
    in_std: Sequence[float],
    coefs: np.ndarray,
    out_nimg: float,
    out_stds: Sequence[float],
) -> None:
    """Draw, for each target std, the target profile ``p_T(tau)`` (dashed) and the
    reconstruction ``sum_i c_i p_i(tau)`` (solid) over ``0 <= tau <= T``; save atomically
    (format from the file suffix, matplotlib's Agg renderer, no display needed)."""
    from matplotlib.figure import Figure

    path = Path(path)
    in_gamma = [sigma_rel_to_gamma(s) for s in in_std]
    tau = np.linspace(0.0, float(out_nimg), 2001)
    unit, unit_name = (MI, "Mi") if out_nimg >= MI else (KIMG, "kimg")
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    colors = [f"C{j % 10}" for j in range(len(out_stds))]
    for j, (std, color) in enumerate(zip(out_stds, colors, strict=True)):
        target = power_profile(tau, out_nimg, sigma_rel_to_gamma(std))
        rebuilt = sum(
            c * power_profile(tau, t, g) for c, t, g in zip(coefs[:, j], in_nimg, in_gamma, strict=True) if c != 0
        )
        ax.plot(tau / unit, target * out_nimg, "--", color=color, lw=1.0)
        ax.plot(tau / unit, rebuilt * out_nimg, "-", color=color, lw=1.2, label=f"std {std:g}")
    ax.set_xlabel(f"training images seen ({unit_name})")
    ax.set_ylabel("weight density x T")
    ax.set_title(f"post-hoc EMA at {out_nimg / unit:g} {unit_name}: target (dashed), reconstructed (solid)")
    ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
