"""Improved precision/recall (k-NN manifolds) on constructed point sets and against a
brute-force numpy computation."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import autoguide.eval.manifold_pr as pr_module
from autoguide.eval.manifold_pr import knn_radii, precision_recall


def grid(offset: float, n: int = 10) -> np.ndarray:
    """``n x n`` points of a unit-spaced grid shifted by ``offset`` on both axes."""
    a = np.arange(n, dtype=np.float64)
    return np.stack(np.meshgrid(a, a), -1).reshape(-1, 2) + offset


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 written out with full distance matrices and sorting."""

    def radii(x):
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def covered(queries, centers, r):
        d = np.sqrt(((queries[:, None] - centers[None]) ** 2).sum(-1))
        return float(np.mean((d <= r[None]).any(1)))

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_disjoint_clusters_give_zero():
    assert precision_recall(grid(0), grid(1000)) == (0.0, 0.0)


def test_identical_sets_give_one():
    points = np.random.default_rng(0).standard_normal((300, 8))
    assert precision_recall(points, points.copy()) == (1.0, 1.0)


def test_half_overlap():
    # real = clusters A and B; generated = A (same points) and a far cluster C. Half of the
    # generated points lie on the real manifold (precision 1/2) and half of the real points
    # are covered by the generated one (recall 1/2).
    a, b, c = grid(0), grid(100), grid(-100)
    precision, recall = precision_recall(np.concatenate([a, b]), np.concatenate([a, c]))
    assert (precision, recall) == (0.5, 0.5)


def test_one_sided_mode_collapse():
    # Generated points all on one of two real clusters: precision 1, recall 1/2.
    rng = np.random.default_rng(1)
    a, b = grid(0), grid(100)
    near_a = a + rng.uniform(-0.1, 0.1, a.shape)
    assert precision_recall(np.concatenate([a, b]), near_a) == (1.0, 0.5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force(k, monkeypatch):
    rng = np.random.default_rng(k)
    real = rng.standard_normal((120, 5))
    fake = rng.standard_normal((90, 5)) * 1.3 + 0.4
    expected = brute_force(real, fake, k)
    assert precision_recall(real, fake, k) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(pr_module, "BLOCK_ELEMENTS", 500)  # many small row blocks, same answer
    assert precision_recall(real, fake, k) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1


def test_knn_radii_match_sklearn():
    x = np.random.default_rng(5).standard_normal((200, 3))
    distances, _ = NearestNeighbors(n_neighbors=4).fit(x).kneighbors(x)  # includes the point itself
    radii = knn_radii(torch.from_numpy(x), k=3).numpy()
    np.testing.assert_allclose(radii, distances[:, 3], rtol=1e-10)


def test_errors():
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="width"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
