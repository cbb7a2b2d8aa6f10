"""Power-function EMA math (EDM2 Sec. 3) against independent numerical computations."""

import math

import numpy as np
import pytest
from scipy import integrate

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


def numeric_sigma_rel(gamma: float) -> float:
    """Std of tau/t under the density (g+1) x^g on [0, 1], by quadrature."""

    def dens(x: float) -> float:
        return (gamma + 1) * x**gamma

    mean = integrate.quad(lambda x: x * dens(x), 0, 1)[0]
    second = integrate.quad(lambda x: x * x * dens(x), 0, 1)[0]
    return math.sqrt(second - mean**2)


def test_paper_values():
    assert sigma_rel_to_gamma(0.050) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.100) == pytest.approx(6.94, abs=0.005)


@pytest.mark.parametrize("gamma", [-0.3, 0.0, 0.5, 2.0, 6.94, 16.97, 50.0, 300.0])
def test_sigma_rel_formula_matches_quadrature(gamma):
    assert gamma_to_sigma_rel(gamma) == pytest.approx(numeric_sigma_rel(gamma), rel=1e-6)


def test_round_trip():
    for s in np.linspace(0.002, MAX_SIGMA_REL, 200):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-10)
    for g in [-0.38, -0.2, 0.0, 1.0, 6.94, 16.97, 100.0, 1000.0]:
        assert sigma_rel_to_gamma(gamma_to_sigma_rel(g)) == pytest.approx(g, rel=1e-8, abs=1e-6)


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.31, float("nan")])
def test_invalid_std_rejected(bad):
    with pytest.raises(ValueError, match="EMA std"):
        sigma_rel_to_gamma(bad)


def test_update_equals_direct_weighted_average():
    """Recursive update with irregular image increments == closed-form weights
    W_k = (t_k^(g+1) - t_(k-1)^(g+1)) / T^(g+1) applied to the trajectory."""
    rng = np.random.default_rng(0)
    dts = rng.choice([1, 7, 32, 64, 100, 513], size=400)  # any batch size, irregular spacing
    times = np.cumsum(dts).astype(np.float64)
    thetas = np.cumsum(rng.normal(size=(len(times), 5)), axis=0)
    for gamma in [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.1), 0.3]:
        ema = np.zeros(5)
        prev = 0.0
        for t, theta in zip(times, thetas, strict=True):
            beta = ema_beta(t, t - prev, gamma)
            ema = beta * ema + (1 - beta) * theta
            prev = t
        edges = np.concatenate([[0.0], times])
        weights = np.diff(edges ** (gamma + 1)) / times[-1] ** (gamma + 1)
        direct = weights @ thetas
        np.testing.assert_allclose(ema, direct, rtol=1e-9, atol=1e-9)


def test_update_spacing_does_not_change_the_profile():
    """On a smooth trajectory, updating every step or every 8th step (dt = images since the
    last update) both approach the continuous average integral p_T(tau) theta(tau) dtau;
    a port that used the batch size as dt while updating every 8th step would not."""

    def theta(t):
        return np.sin(3e-4 * t) + 1e-4 * t

    batch, steps = 64, 4000
    gamma = sigma_rel_to_gamma(0.1)
    T = batch * steps
    exact = integrate.quad(lambda tau: power_profile(tau, T, gamma) * theta(tau), 0, T, limit=500)[0]

    def run(every: int, dt_mode: str) -> float:
        ema, last = 0.0, 0
        for k in range(1, steps + 1):
            t = k * batch
            if k % every:
                continue
            dt = t - last if dt_mode == "images" else batch
            beta = ema_beta(t, dt, gamma)
            ema = beta * ema + (1 - beta) * theta(t)
            last = t
        return ema

    scale = abs(exact)
    assert abs(run(1, "images") - exact) < 1e-3 * scale
    assert abs(run(8, "images") - exact) < 5e-3 * scale
    assert abs(run(8, "batch") - exact) > 0.1 * scale  # the known bug is visible


@pytest.mark.parametrize(
    "t_a,s_a,t_b,s_b",
    [(1.0, 0.05, 1.0, 0.1), (0.3, 0.1, 1.0, 0.05), (1.0, 0.2, 0.7, 0.07), (5e8, 0.05, 2e8, 0.1)],
)
def test_inner_product_matches_quadrature(t_a, s_a, t_b, s_b):
    g_a, g_b = sigma_rel_to_gamma(s_a), sigma_rel_to_gamma(s_b)
    m = min(t_a, t_b)

    # substitute tau = m u so the integrand is O(1) on [0, 1]
    def integrand(u: float) -> float:
        return power_profile(m * u, t_a, g_a) * power_profile(m * u, t_b, g_b) * m

    numeric = integrate.quad(integrand, 0, 1, limit=200, epsabs=0, epsrel=1e-11)[0]
    assert profile_inner(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-8)


def test_inner_product_stays_finite_for_large_counts_and_exponents():
    g = sigma_rel_to_gamma(0.005)  # gamma ~ 2e3; t^(g+1) would overflow float64
    value = profile_inner(3e9, g, 2e9, g)
    assert np.isfinite(value) and value >= 0


def _snapshot_grid(n: int, total: float = 1e6):
    times = np.arange(1, n + 1) / n * total
    return np.repeat(times, 2), np.tile([0.05, 0.10], n)


def test_coefficients_shape_sum_and_support():
    in_nimg, in_std = _snapshot_grid(16)
    out_nimg = np.array([1e6, 1e6, 0.5e6, 0.25e6])
    out_std = np.array([0.075, 0.13, 0.07, 0.12])
    c = solve_coefficients(in_nimg, in_std, out_nimg, out_std)
    assert c.shape == (32, 4)
    np.testing.assert_allclose(c.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    for j in range(4):
        assert np.all(c[in_nimg > out_nimg[j], j] == 0)
        assert np.any(c[in_nimg == out_nimg[j], j] != 0)


def test_stored_profile_is_reproduced_exactly():
    in_nimg, in_std = _snapshot_grid(8)
    c = solve_coefficients(in_nimg, in_std, [1e6, 0.5e6], [0.10, 0.05])
    expected = np.zeros_like(c)
    expected[(in_nimg == 1e6) & (in_std == 0.10), 0] = 1
    expected[(in_nimg == 0.5e6) & (in_std == 0.05), 1] = 1
    np.testing.assert_allclose(c, expected, atol=1e-6)
    assert profile_error(in_nimg, in_std, [1e6, 0.5e6], [0.10, 0.05], c) == pytest.approx([0, 0], abs=1e-5)


def test_reconstructed_profile_against_discretised_least_squares():
    """Independent check: least squares on a fine tau grid (no closed forms) gives the same
    reconstructed profile, and profile_error matches the numerically measured error."""
    in_nimg, in_std = _snapshot_grid(12)
    T, s = 1e6, 0.075
    c = solve_coefficients(in_nimg, in_std, [T], [s])[:, 0]
    tau = (np.arange(200000) + 0.5) / 200000 * T
    dtau = T / 200000
    basis = np.stack([power_profile(tau, t, sigma_rel_to_gamma(v)) for t, v in zip(in_nimg, in_std, strict=True)], 1)
    target = power_profile(tau, T, sigma_rel_to_gamma(s))
    x = np.linalg.lstsq(basis, target, rcond=None)[0]
    numeric_fit = basis @ (x / x.sum())
    ours = basis @ c
    norm = np.sqrt(np.sum(target**2) * dtau)
    assert np.sqrt(np.sum((ours - numeric_fit) ** 2) * dtau) < 2e-3 * norm
    measured = np.sqrt(np.sum((ours - target) ** 2) * dtau) / norm
    assert profile_error(in_nimg, in_std, [T], [s], c[:, None])[0] == pytest.approx(measured, rel=0.05)
    assert measured < 0.01


def test_profile_error_flags_unrepresentable_stds():
    in_nimg, in_std = _snapshot_grid(16)
    stds = [0.01, 0.075, 0.29]
    c = solve_coefficients(in_nimg, in_std, [1e6] * 3, stds)
    err = profile_error(in_nimg, in_std, [1e6] * 3, stds, c)
    assert err[1] < 0.01 and err[0] > 0.2 and err[2] > 0.2


def test_no_usable_snapshot_is_an_error():
    with pytest.raises(ValueError, match="no snapshot"):
        solve_coefficients([100.0, 200.0], [0.05, 0.1], [50.0], [0.07])
