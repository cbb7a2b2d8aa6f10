"""Exact 2D-toy metrics: exact samples score as defined, the density matches an independent
scipy evaluation, and samples off the tree are caught."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from autoguide.data.toy2d import toy_mixture
from autoguide.eval.toy_metrics import ToyMetricsConfig, density_level, toy_metrics

CFG = ToyMetricsConfig(num_density_samples=10_000)


def scipy_log_density(classes: str, x: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(x; mu_k, C_k), one scipy Gaussian per component."""
    m = toy_mixture(classes)
    terms = [
        np.log(w) + multivariate_normal(mu, c).logpdf(x)
        for w, mu, c in zip(m.weights.numpy(), m.means.numpy(), m.covs.numpy(), strict=True)
    ]
    return logsumexp(np.stack(terms, -1), axis=-1)


@pytest.fixture(scope="module")
def exact_a():
    return toy_mixture("A").sample(2000, torch.Generator().manual_seed(5))


def test_exact_samples_score_as_defined(exact_a):
    metrics = toy_metrics(exact_a, [0] * len(exact_a), CFG)
    # outliers are defined by the 1% quantile of exact samples: binomial sd ~ 0.0022 at n = 2000
    assert abs(metrics["toy_outliers"] - CFG.outlier_quantile) < 0.01
    assert metrics["toy_precision"] > 0.9 and metrics["toy_recall"] > 0.9


def test_log_density_matches_scipy():
    m = toy_mixture("B")
    x = m.sample(5, torch.Generator().manual_seed(1)).numpy()
    expected = scipy_log_density("B", x).mean()
    assert toy_metrics(torch.from_numpy(np.repeat(x, 2, 0)), [1] * 10, CFG)["toy_logp"] == pytest.approx(
        expected, rel=1e-9
    )


def test_points_are_measured_against_their_own_class(exact_a):
    right = toy_metrics(exact_a, [0] * len(exact_a), CFG)
    wrong = toy_metrics(exact_a, [1] * len(exact_a), CFG)  # class A's points called class B
    assert wrong["toy_logp"] < right["toy_logp"] - 10
    assert wrong["toy_outliers"] > 0.5 and wrong["toy_precision"] < 0.2


def test_unconditional_samples_use_configured_classes(exact_a):
    as_a = toy_metrics(exact_a, None, ToyMetricsConfig(classes="A", num_density_samples=10_000))
    assert as_a == toy_metrics(exact_a, [0] * len(exact_a), CFG)
    as_ab = toy_metrics(exact_a[:50], None, CFG)  # CFG.classes = "AB": both trees
    assert as_ab["toy_logp"] == pytest.approx(scipy_log_density("AB", exact_a.numpy()[:50]).mean(), rel=1e-9)


def test_far_points_are_all_outliers():
    far = torch.full((100, 2), 10.0) + torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    metrics = toy_metrics(far, [0] * 100, CFG)
    assert metrics["toy_outliers"] == 1.0 and metrics["toy_precision"] == 0.0 and metrics["toy_recall"] == 0.0


def test_density_level_is_the_quantile():
    level = density_level("A", 0.05, 10_000, 0)
    fresh = toy_mixture("A").sample(10_000, torch.Generator().manual_seed(123))
    share_below = float((toy_mixture("A").log_prob(fresh) < level).double().mean())
    assert abs(share_below - 0.05) < 0.009  # binomial sd ~0.0022 for each of the two estimates


def test_errors():
    with pytest.raises(ValueError, match="2D points"):
        toy_metrics(torch.zeros(10, 3), None, CFG)
    with pytest.raises(ValueError, match="class labels"):
        toy_metrics(torch.zeros(10, 2), [2] * 10, CFG)
    with pytest.raises(ValueError, match="not finite"):
        toy_metrics(torch.full((10, 2), float("nan")), None, CFG)
    with pytest.raises(ValueError, match="outlier_quantile"):
        ToyMetricsConfig(outlier_quantile=1.5)


def test_outlier_share_uses_the_level_of_each_class(exact_a):
    # blurred samples: a fair share falls below the level; count them with the mixture directly
    points = exact_a[:300] + 0.03 * torch.randn(300, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = [0] * 150 + [1] * 150
    below = [
        toy_mixture(name).log_prob(points[rows])
        < density_level(name, CFG.outlier_quantile, CFG.num_density_samples, CFG.seed)
        for name, rows in (("A", slice(0, 150)), ("B", slice(150, 300)))
    ]
    expected = float(torch.cat(below).double().mean())
    assert 0.05 < expected < 0.95
    assert toy_metrics(points, labels, CFG)["toy_outliers"] == expected
