"""Fréchet distance against independent computations (scipy's sqrtm, diagonal closed form)."""

import numpy as np
import pytest
import scipy.linalg

from autoguide.eval.frechet import (
    GaussianAccumulator,
    frechet_distance,
    frechet_distance_infinity,
    gaussian_stats,
    subset_sizes,
)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def fd_scipy(mu1, s1, mu2, s2) -> float:
    """FD = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), with scipy's general sqrtm."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


@pytest.mark.parametrize("d", [1, 5, 64])
def test_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    expected = fd_scipy(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_diagonal_closed_form_with_singular_covariance():
    # For commuting (diagonal) covariances FD = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2,
    # which stays exact when some variances are 0 (a rank-deficient covariance).
    a = np.array([4.0, 1.0, 0.0, 2.25])
    b = np.array([1.0, 0.0, 0.0, 0.25])
    mu1, mu2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 5.0, 4.0])
    expected = 1.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_identical_gaussians_are_at_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(16), random_spd(rng, 16)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9


def test_rotated_covariance_same_spectrum():
    # S2 = R S1 R^T has the spectrum of S1 but a different orientation: FD > 0, scipy agrees.
    rng = np.random.default_rng(1)
    s1 = np.diag([3.0, 1.0, 0.2])
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    s2 = q @ s1 @ q.T
    zero = np.zeros(3)
    assert frechet_distance(zero, s1, zero, s2) == pytest.approx(fd_scipy(zero, s1, zero, s2), rel=1e-8)
    assert frechet_distance(zero, s1, zero, s2) > 0.1


def test_sample_estimate_converges_to_closed_form():
    rng = np.random.default_rng(2)
    d = 4
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    exact = fd_scipy(mu1, s1, mu2, s2)
    errors = []
    for n in (200, 5_000, 200_000):
        x = rng.multivariate_normal(mu1, s1, size=n)
        y = rng.multivariate_normal(mu2, s2, size=n)
        errors.append(abs(frechet_distance(*gaussian_stats(x), *gaussian_stats(y)) - exact))
    assert errors[2] < 0.01 * exact
    assert errors[2] < errors[0]


def test_streaming_stats_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 7)) * 3 + 10  # an offset mean tests the centring
    acc = GaussianAccumulator(7)
    for part in np.array_split(x, 9):
        acc.update(part)
    mu, sigma = acc.stats()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-10)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        GaussianAccumulator(3).update(np.zeros((4, 2)))


def test_fd_infinity_removes_the_small_sample_bias():
    # Samples of N(mu1, S1) against the exact N(mu2, S2): the plain FD of 1,000 samples in 64
    # dimensions is biased upward by about tr(S1) / N + (sqrt-term bias); the extrapolation to
    # N -> inf (Chong & Forsyth 2020) lands on the closed form (scipy) within a fraction of it.
    rng = np.random.default_rng(7)
    d, n = 64, 1000
    mu1, mu2 = rng.standard_normal(d) * 0.1, np.zeros(d)
    s2 = random_spd(rng, d)
    s1 = s2 + 0.2 * random_spd(rng, d)  # close distributions: the bias is a large part of FD
    exact = fd_scipy(mu1, s1, mu2, s2)
    x = rng.multivariate_normal(mu1, s1, size=n)
    plain = frechet_distance(*gaussian_stats(x), mu2, s2)
    extrapolated = frechet_distance_infinity(x, mu2, s2, points=15, min_fraction=0.3)
    bias = plain - exact
    assert bias > 0.05 * exact
    assert abs(extrapolated - exact) < 0.25 * bias


def test_fd_infinity_is_the_intercept_of_a_line_through_subset_fds():
    # the sizes by hand (5 evenly spaced from 300 to 600), the subsets as documented (seeded
    # permutations, one per size), FD of each, and the intercept of an lstsq line in 1 / N_i.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 4))
    mu, sigma = np.ones(4), np.eye(4) * 2
    sizes = subset_sizes(600, 5, 0.5, 4)
    assert list(sizes) == [300, 375, 450, 525, 600]
    order = np.random.default_rng(11)
    values = [frechet_distance(*gaussian_stats(x[order.permutation(600)[:s]]), mu, sigma) for s in sizes]
    a = np.stack([np.ones(len(sizes)), 1.0 / sizes], 1)
    intercept = np.linalg.lstsq(a, np.array(values), rcond=None)[0][0]
    assert frechet_distance_infinity(x, mu, sigma, points=5, min_fraction=0.5, seed=11) == pytest.approx(
        intercept, rel=1e-10
    )


def test_fd_infinity_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"feature dimension 64, got \[40, 80, 120, 160, 200\]"):
        subset_sizes(200, 5, 0.2, 64)
    with pytest.raises(ValueError, match="points must be >= 2"):
        subset_sizes(1000, 1, 0.2, 4)
    with pytest.raises(ValueError, match=r"min_fraction in \(0, 1\), got 5 and 1.5"):
        subset_sizes(1000, 5, 1.5, 4)
    with pytest.raises(ValueError, match="need two sizes"):  # 3 samples: every size rounds to 3
        subset_sizes(3, 5, 0.9, 1)
