"""Power-function EMA mathematics (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Sec. 3 and App. C).

A power-function EMA with exponent ``gamma``, read at training time ``t`` (counted in
training images), averages the weights along the trajectory with the normalised profile

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),    0 <= tau <= t.

Its width relative to ``t`` is

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))),

the quantity every user-facing option ("EMA std", ``ema_std``) refers to. Post-hoc EMA
stores snapshots of a few such EMAs at many times and rebuilds any other profile as a
least-squares combination of the stored profiles (Sec. 3.2).
"""

from __future__ import annotations

import math

import numpy as np

# sigma_rel(gamma) rises from 0 at gamma = -1 to its maximum at the root of
# gamma^2 + 3 gamma + 1 = 0 (d/dgamma log sigma_rel^2 = 0), then falls to 0 as gamma -> inf.
# sigma_rel_to_gamma returns the falling branch (largest root), so gamma >= GAMMA_AT_MAX_STD
# > -1/2 and every profile is square-integrable.
GAMMA_AT_MAX_STD = (math.sqrt(5.0) - 3.0) / 2.0


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative std of the power profile: ``sqrt((g+1) / ((g+2)^2 (g+3)))`` (EDM2 Eq. 3)."""
    g = float(gamma)
    if not g > -1.0:
        raise ValueError(f"power-EMA exponent gamma must be > -1, got {gamma!r}")
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


MAX_SIGMA_REL = gamma_to_sigma_rel(GAMMA_AT_MAX_STD)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent of the power EMA with relative std ``sigma_rel``.

    The largest real root of ``g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2) = 0`` (EDM2 App. C),
    i.e. ``gamma_to_sigma_rel`` inverted on its decreasing branch. Valid for
    ``0 < sigma_rel <= MAX_SIGMA_REL`` (about 0.299).
    """
    s = float(sigma_rel)
    if not 0.0 < s <= MAX_SIGMA_REL:
        raise ValueError(f"EMA std (sigma_rel) must lie in (0, {MAX_SIGMA_REL:.4f}], got {sigma_rel!r}")
    inv = s**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    real = roots[np.abs(roots.imag) <= 1e-7 * np.maximum(1.0, np.abs(roots.real))].real
    gamma = float(real.max())
    # At s = MAX_SIGMA_REL the two upper roots coincide and rounding can put them just below.
    return max(gamma, GAMMA_AT_MAX_STD)


def ema_beta(nimg: float, dt: float, gamma: float) -> float:
    """Decay of one power-EMA update that advanced training from ``nimg - dt`` to ``nimg``.

    ``beta = (1 - dt / nimg)^(gamma + 1)`` and ``ema <- beta ema + (1 - beta) net``, so the
    weights at ``nimg`` receive exactly the profile mass of ``(nimg - dt, nimg]``, whatever
    the batch size and however irregularly the updates are spaced (EDM2 Eq. 4 with the step
    measured in images).
    """
    if not (dt > 0 and nimg >= dt):
        raise ValueError(f"need 0 < dt <= nimg for a power-EMA update, got dt={dt}, nimg={nimg}")
    return (1.0 - dt / nimg) ** (gamma + 1.0)


def power_profile(tau: np.ndarray, nimg: float, gamma: float) -> np.ndarray:
    """The profile ``p_t(tau) = (g+1) tau^g / t^(g+1)`` on ``[0, t]``, zero beyond ``t``."""
    tau = np.asarray(tau, dtype=np.float64)
    inside = (tau >= 0) & (tau <= nimg)
    ratio = np.where(inside, tau, 0.0) / nimg
    return np.where(inside, (gamma + 1.0) * ratio**gamma / nimg, 0.0)


def profile_inner(
    t_a: np.ndarray | float, gamma_a: np.ndarray | float, t_b: np.ndarray | float, gamma_b: np.ndarray | float
) -> np.ndarray:
    """Closed-form ``<p_a, p_b> = integral_0^inf p_{t_a,g_a}(tau) p_{t_b,g_b}(tau) dtau``.

    With ``m = min(t_a, t_b)``:
    ``(g_a+1)(g_b+1) m^(g_a+g_b+1) / ((g_a+g_b+1) t_a^(g_a+1) t_b^(g_b+1))``, evaluated as
    ``(g_a+1)(g_b+1) / ((g_a+g_b+1) m) (m/t_a)^(g_a+1) (m/t_b)^(g_b+1)`` so that image
    counts of 1e9 and exponents of 100 stay finite. Broadcasts over its arguments.
    """
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(t_a, t_b)
    return (g_a + 1.0) * (g_b + 1.0) / ((g_a + g_b + 1.0) * m) * (m / t_a) ** (g_a + 1.0) * (m / t_b) ** (g_b + 1.0)


def _as_vector(name: str, values, length: int | None = None) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        raise ValueError(f"{name} must be a 1-D sequence of length {length}, got shape {arr.shape}")
    return arr


def _normal_equations(t: np.ndarray, g: np.ndarray, t_out: float, g_out: float) -> tuple[np.ndarray, np.ndarray]:
    """``(G, b)`` of the least-squares fit of target profile ``(t_out, g_out)`` by the profiles
    ``(t_i, g_i)``: ``G_ik = <p_i, p_k>``, ``b_i = <p_i, p_target>`` (``profile_inner``)."""
    gram = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    return gram, profile_inner(t, g, t_out, g_out)


def _checked(in_nimg, in_std, out_nimg, out_std) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four arguments as float64 vectors of matching lengths, stds as exponents gamma."""
    in_nimg = _as_vector("in_nimg", in_nimg)
    in_std = _as_vector("in_std", in_std, len(in_nimg))
    out_nimg = _as_vector("out_nimg", out_nimg)
    out_std = _as_vector("out_std", out_std, len(out_nimg))
    in_gamma = np.array([sigma_rel_to_gamma(s) for s in in_std])
    out_gamma = np.array([sigma_rel_to_gamma(s) for s in out_std])
    return in_nimg, in_gamma, out_nimg, out_gamma


def solve_coefficients(in_nimg, in_std, out_nimg, out_std) -> np.ndarray:
    """Least-squares coefficients that rebuild target power EMAs from stored snapshots.

    Snapshot ``i`` is an EMA with std ``in_std[i]`` read at ``in_nimg[i]``; target ``j`` is
    the EMA with std ``out_std[j]`` at ``out_nimg[j]``. For each target, only snapshots with
    ``0 < in_nimg[i] <= out_nimg[j]`` take part; the normal equations ``G x = b`` with
    ``G_ik = <p_i, p_k>`` and ``b_i = <p_i, p_target>`` are solved in float64 by
    ``numpy.linalg.lstsq`` (minimum-norm where ``G`` is singular) and the solution is scaled
    to sum to 1 so constant parameters are reproduced exactly (EDM2 Sec. 3.2).
    Coefficients may be negative. Returns ``[n_in, n_out]``; excluded snapshots get 0.
    """
    in_nimg, in_gamma, out_nimg, out_gamma = _checked(in_nimg, in_std, out_nimg, out_std)
    coefs = np.zeros((len(in_nimg), len(out_nimg)), dtype=np.float64)
    for j, (t_out, g_out) in enumerate(zip(out_nimg, out_gamma, strict=True)):
        use = (in_nimg > 0) & (in_nimg <= t_out)
        if not use.any():
            raise ValueError(
                f"no snapshot with 0 < nimg <= {t_out:g} to reconstruct std {gamma_to_sigma_rel(g_out):g} from"
            )
        x = np.linalg.lstsq(*_normal_equations(in_nimg[use], in_gamma[use], t_out, g_out), rcond=None)[0]
        total = x.sum()
        if not abs(total) > 1e-12:
            raise ValueError(
                f"reconstruction of std {gamma_to_sigma_rel(g_out):g} at nimg {t_out:g} is degenerate "
                f"(coefficients sum to {total:g})"
            )
        coefs[use, j] = x / total
    return coefs


def profile_error(in_nimg, in_std, out_nimg, out_std, coefs: np.ndarray) -> np.ndarray:
    """Relative L2 error ``||sum_i c_ij p_i - p_j|| / ||p_j||`` of each reconstructed profile.

    Computed in closed form from the inner products: ``c^T G c - 2 c^T b + <p_j, p_j>``.
    This is the measure of whether a target std is representable by the stored snapshots.
    """
    in_nimg, in_gamma, out_nimg, out_gamma = _checked(in_nimg, in_std, out_nimg, out_std)
    coefs = np.asarray(coefs, dtype=np.float64).reshape(len(in_nimg), len(out_nimg))
    errors = np.zeros(len(out_nimg))
    for j, (t_out, g_out) in enumerate(zip(out_nimg, out_gamma, strict=True)):
        use = coefs[:, j] != 0
        c = coefs[use, j]
        gram, rhs = _normal_equations(in_nimg[use], in_gamma[use], t_out, g_out)
        target = profile_inner(t_out, g_out, t_out, g_out)
        sq = c @ gram @ c - 2.0 * c @ rhs + target
        errors[j] = math.sqrt(max(float(sq), 0.0) / float(target))
    return errors
