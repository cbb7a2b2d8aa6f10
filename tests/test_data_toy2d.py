"""The 2D tree mixture: construction against hand-derived values, exact density, score and
denoiser against independent scipy/numpy computations."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import multivariate_normal

from autoguide.data import toy2d
from autoguide.data.toy2d import ExactToyDenoiser, Toy2DDataset, toy_mixture

ORIGIN = np.array([0.0030, 0.0325])
SCALE = np.array([1.3136, 1.3844])
BRANCHES = 2**7 - 1  # depths 0..6 of a binary tree
DRAWS_PER_TREE = 3 * BRANCHES  # one randn for dist, two for the children's angles


@pytest.fixture(scope="module")
def ab():
    return toy_mixture("AB")


@pytest.fixture(scope="module")
def draws():
    return np.random.RandomState(2).randn(2 * DRAWS_PER_TREE + 1)


def _unnormalised_first_component(dist, depth, pos, angle):
    direction = np.array([math.cos(angle), math.sin(angle)])
    mean = (pos + direction * dist * 0.07) * SCALE
    return dist * 0.5**depth, mean


def test_component_counts_and_weights(ab):
    assert len(ab.weights) == 2 * 8 * BRANCHES == 2032
    assert torch.bincount(ab.classes).tolist() == [1016, 1016]
    for classes in ("A", "B"):
        single = toy_mixture(classes)
        assert len(single.weights) == 1016
        torch.testing.assert_close(single.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(ab.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="'C'"):
        toy_mixture("C")


def test_construction_follows_the_draw_order(ab, draws):
    """Pin the recursion: A's root, A's +1 child, A's -1 child, then B's root (draw 381)."""
    raw_weight = lambda i: ab.weights[i].item()  # noqa: E731
    angle_a = math.pi / 4
    dist0 = 0.292 * (1 + 0.2 * draws[0])
    w0, m0 = _unnormalised_first_component(dist0, 0, ORIGIN, angle_a)
    np.testing.assert_allclose(ab.means[0].numpy(), m0, rtol=1e-12)
    pos1 = ORIGIN + np.array([math.cos(angle_a), math.sin(angle_a)]) * dist0
    # +1 child: angle from draw 1, dist from draw 2; its 8 components follow the root's 8.
    dist_plus = 0.292 * 0.8 * (1 + 0.2 * draws[2])
    w_plus, m_plus = _unnormalised_first_component(dist_plus, 1, pos1, angle_a + (1 + 0.2 * draws[1]))
    np.testing.assert_allclose(ab.means[8].numpy(), m_plus, rtol=1e-12)
    # -1 child: after the +1 subtree (63 branches, 189 draws, 504 components).
    dist_minus = 0.292 * 0.8 * (1 + 0.2 * draws[192])
    w_minus, m_minus = _unnormalised_first_component(dist_minus, 1, pos1, angle_a - (1 + 0.2 * draws[191]))
    np.testing.assert_allclose(ab.means[8 + 504].numpy(), m_minus, rtol=1e-12)
    # B's root uses the first draw after tree A.
    dist_b = 0.292 * (1 + 0.2 * draws[DRAWS_PER_TREE])
    w_b, m_b = _unnormalised_first_component(dist_b, 0, ORIGIN, 5 * math.pi / 4)
    np.testing.assert_allclose(ab.means[1016].numpy(), m_b, rtol=1e-12)
    assert ab.classes[1015] == 0 and ab.classes[1016] == 1
    ratios = np.array([raw_weight(8), raw_weight(512), raw_weight(1016)]) / raw_weight(0)
    np.testing.assert_allclose(ratios, np.array([w_plus, w_minus, w_b]) / w0, rtol=1e-12)
    # Root covariance: thick = 0.2 / dist, size = scale * dist * 0.06.
    d = np.array([math.cos(angle_a), math.sin(angle_a)])
    size = SCALE * dist0 * 0.06
    cov = (np.outer(d, d) + (np.eye(2) - np.outer(d, d)) * (0.2 / dist0) ** 2) * np.outer(size, size)
    np.testing.assert_allclose(ab.covs[0].numpy(), cov, rtol=1e-12)


def _scipy_log_components(mixture, x, sigma):
    """log(w_k N(x; mu_k, C_k + sigma^2 I)) for every point and component, by scipy."""
    w, mu, cov = mixture.weights.numpy(), mixture.means.numpy(), mixture.covs.numpy()
    return np.stack(
        [np.log(w[k]) + multivariate_normal(mu[k], cov[k] + sigma**2 * np.eye(2)).logpdf(x) for k in range(len(w))],
        axis=-1,
    )


@pytest.fixture(scope="module")
def points(ab):
    """Points on the branches, between them and far away."""
    on = ab.sample(4, torch.Generator().manual_seed(1))
    return torch.cat([on, torch.tensor([[0.1, -0.3], [0.9, 0.9], [-2.0, 1.5]], dtype=torch.float64)])


@pytest.mark.parametrize("sigma", [0.0, 0.03, 0.4])
def test_log_prob_against_scipy(ab, points, sigma):
    expected = logsumexp(_scipy_log_components(ab, points.numpy(), sigma), axis=-1)
    np.testing.assert_allclose(ab.log_prob(points, sigma).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_noisy_density_integrates_to_one(ab):
    """Riemann sum on a 0.1 grid; exact to ~1e-6 for a density smoothed by sigma = 0.5."""
    grid = torch.linspace(-4, 4, 81, dtype=torch.float64)
    xy = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    mass = ab.log_prob(xy, 0.5).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass.item() - 1) < 1e-4


@pytest.mark.parametrize("sigma", [0.02, 0.5])
def test_score_against_finite_differences(ab, points, sigma):
    h = 1e-6
    fd = torch.stack(
        [
            (ab.log_prob(points + h * e, sigma) - ab.log_prob(points - h * e, sigma)) / (2 * h)
            for e in torch.eye(2, dtype=torch.float64)
        ],
        -1,
    )
    torch.testing.assert_close(ab.score(points, sigma), fd, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.05, 1.0])
def test_denoiser_is_the_posterior_mean(ab, points, sigma):
    """E[x0 | x] = sum_k r_k (mu_k + C_k (C_k + s^2 I)^-1 (x - mu_k)), per-component Gaussian
    posterior means weighted by scipy responsibilities."""
    x = points.numpy()
    r = softmax(_scipy_log_components(ab, x, sigma), axis=-1)
    mu, cov = ab.means.numpy(), ab.covs.numpy()
    gain = cov @ np.linalg.inv(cov + sigma**2 * np.eye(2))
    posterior = mu[None] + np.einsum("kij,nkj->nki", gain, x[:, None] - mu[None])
    expected = (r[..., None] * posterior).sum(1)
    np.testing.assert_allclose(ab.denoise(points, sigma).numpy(), expected, rtol=1e-7, atol=1e-9)


def test_per_row_sigma_matches_scalar_sigma(ab, points):
    sigmas = torch.tensor([0.01, 0.1, 1.0, 5.0, 0.3, 0.02, 2.0], dtype=torch.float64)
    per_row = ab.denoise(points, sigmas)
    for i, s in enumerate(sigmas):
        torch.testing.assert_close(per_row[i], ab.denoise(points[i : i + 1], s.item())[0])


def test_chunking_does_not_change_results(ab, monkeypatch):
    """Rows are evaluated in cache-sized chunks on the CPU (CHUNK rows elsewhere); any chunking
    gives the same log-density, score and denoiser."""
    x = ab.sample(300, torch.Generator().manual_seed(4))
    sigma = torch.linspace(0.01, 2.0, 300, dtype=torch.float64)
    assert ab.rows_per_chunk(torch.device("cpu")) == max(1, toy2d.CPU_CHUNK_ELEMENTS // len(ab.weights))
    assert ab.rows_per_chunk(torch.device("meta")) == toy2d.CHUNK
    chunked = (ab.log_prob(x, sigma), ab.score(x, sigma), ab.denoise(x, sigma))
    monkeypatch.setattr(toy2d, "CPU_CHUNK_ELEMENTS", 7 * len(ab.weights))  # 7 rows: a ragged last chunk
    for got, expected in zip((ab.log_prob(x, sigma), ab.score(x, sigma), ab.denoise(x, sigma)), chunked, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_samples_follow_the_mixture(ab):
    x, labels = ab.sample(20000, torch.Generator().manual_seed(0), return_labels=True)
    expected_mean = (ab.weights[:, None] * ab.means).sum(0)
    torch.testing.assert_close(x.mean(0), expected_mean, atol=0.02, rtol=0)
    share_a = ab.weights[ab.classes == 0].sum().item()
    assert abs((labels == 0).double().mean().item() - share_a) < 0.015
    _b_only, b_labels = toy_mixture("B").sample(500, torch.Generator().manual_seed(0), return_labels=True)
    assert (b_labels == 1).all()
    # Samples sit where the density is high: far higher mean log-density than a shifted copy.
    assert ab.log_prob(x[:2000]).mean() > ab.log_prob(x[:2000] + 0.2).mean() + 2


def test_exact_denoiser_module(ab, points):
    net = ExactToyDenoiser("AB")
    assert (net.label_dim, net.img_channels, net.img_resolution, net.sigma_data) == (0, 2, 0, 0.5)
    x = points.to(torch.float32)
    sigma = torch.full((len(x),), 0.2)
    out = net(x, sigma)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, ab.denoise(points.float(), 0.2).float())
    _d, logvar = net(x, 0.2, return_logvar=True)
    assert logvar.shape == (len(x), 1)
    a_only = ExactToyDenoiser("A")(x, sigma)
    assert not torch.allclose(a_only, out)


def test_dataset_items_and_determinism():
    data = Toy2DDataset("AB", 1000, seed=3)
    x, label = data[0]
    assert x.shape == (2,) and x.dtype == torch.float32 and label in (0, 1)
    assert len(data) == 1000 and data.label_dim == 2 and data.img_resolution == 0
    assert set(data.labels.tolist()) == {0, 1}
    assert torch.equal(Toy2DDataset("AB", 1000, seed=3).points, data.points)
    assert not torch.equal(Toy2DDataset("AB", 1000, seed=4).points, data.points)
    assert set(Toy2DDataset("A", 100, 0).labels.tolist()) == {0}


def test_select_is_the_single_class_mixture(ab):
    """``select(c)`` keeps class c's components with renormalised weights: the same mixture as
    building class c alone; float32 copies agree with float64 to float32 precision."""
    for index, name in enumerate("AB"):
        alone, selected = toy_mixture(name), ab.select(index)
        torch.testing.assert_close(selected.weights, alone.weights)
        torch.testing.assert_close(selected.means, alone.means)
        assert (selected.classes == index).all()
    assert len(ab.select(None).weights) == len(ab.weights)
    x = ab.sample(300, torch.Generator().manual_seed(1))
    single = ab.select(0, torch.float32)
    assert single.dtype == torch.float32 and single.denoise(x, 0.1).dtype == torch.float32
    torch.testing.assert_close(single.denoise(x, 0.1).double(), toy_mixture("A").denoise(x, 0.1), atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="no components of class 1"):
        toy_mixture("A").select(1)


def test_dataset_exact_denoiser_follows_the_conditioning(ab):
    """One-hot rows use their class's posterior mean E[x0 | x, c]; rows of zeros (dropped labels)
    and ``labels=None`` the dataset's unconditional mixture; checked against float64 per row."""
    data = Toy2DDataset("AB", 100, seed=0)
    x = ab.sample(40, torch.Generator().manual_seed(2)).float()
    sigma = torch.linspace(0.01, 3.0, 40)
    labels = torch.zeros(40, 2)
    labels[:15, 0] = 1
    labels[15:30, 1] = 1
    out = data.exact_denoiser(x, sigma, labels)
    assert out.dtype == torch.float32
    expected = torch.cat(
        [
            toy_mixture("A").denoise(x[:15], sigma[:15]),
            toy_mixture("B").denoise(x[15:30], sigma[15:30]),
            ab.denoise(x[30:], sigma[30:]),
        ]
    )
    torch.testing.assert_close(out.double(), expected, atol=5e-5, rtol=0)
    torch.testing.assert_close(data.exact_denoiser(x, sigma, None).double(), ab.denoise(x, sigma), atol=5e-5, rtol=0)
    a_only = Toy2DDataset("A", 100, seed=0)
    torch.testing.assert_close(
        a_only.exact_denoiser(x, sigma, None).double(), toy_mixture("A").denoise(x, sigma), atol=5e-5, rtol=0
    )
    with pytest.raises(ValueError, match="label 1 is not a class of this dataset"):
        a_only.exact_denoiser(x[15:30], sigma[15:30], labels[15:30])
