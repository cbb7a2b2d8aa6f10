"""The in-project MNIST feature classifier: a short training run learns the digits, the file
round-trips, features come from the penultimate layer, errors say how to make the file."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autoguide.apps.mnist_classifier import main
from autoguide.data.mnist import MNIST5k
from autoguide.eval.mnist_classifier import (
    MnistClassifier,
    MnistFeatures,
    accuracy,
    load_classifier,
    random_shift,
    save_classifier,
    train,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "mnist-classifier.safetensors"
    main(["train", "--out", str(path), "--steps", "250", "--batch-size", "32", "--lr", "3e-3", "--device", "cpu"])
    return path


def test_short_training_learns_the_digits(trained, capsys):
    net, card = load_classifier(trained)
    test_set = MNIST5k("test")
    assert card["test_accuracy"] > 0.8  # chance is 0.1
    assert accuracy(net, test_set.images, test_set.labels) == pytest.approx(card["test_accuracy"])
    assert card["train"]["steps"] == 250 and card["test_images"] == 500
    main(["test", str(trained)])
    assert "test accuracy" in capsys.readouterr().out


def test_features_are_the_penultimate_layer(trained):
    extractor = MnistFeatures(trained)
    test_set = MNIST5k("test")
    gray = torch.round((test_set.images[:20] + 1) * 127.5).to(torch.uint8)
    features = extractor(gray)
    # independent path: logits = head(features) in eval mode (dropout off)
    np.testing.assert_allclose(extractor.net.head(features), extractor.net(test_set.images[:20]), rtol=1e-5, atol=1e-5)
    assert features.shape == (20, 128)
    assert torch.equal(extractor(gray.repeat(1, 3, 1, 1)), features)  # RGB copies of gray, same features
    assert len(extractor.sha256) == 64


def test_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    net = MnistClassifier().eval()
    save_classifier(tmp_path / "c.safetensors", net, {"format": "autoguide-mnist-classifier/1", "arch": net.arch})
    loaded, card = load_classifier(tmp_path / "c.safetensors")
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(loaded(x), net(x)) and card["arch"] == net.arch
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left


def test_random_shift_moves_pixels_and_fills_background():
    image = torch.full((1, 1, 32, 32), -1.0)
    image[0, 0, 10, 20] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifted = random_shift(image.repeat(50, 1, 1, 1), 2, generator)
    for out in shifted:
        ((row, col),) = torch.nonzero(out[0] == 1.0).tolist()
        assert abs(row - 10) <= 2 and abs(col - 20) <= 2
        assert int((out == -1.0).sum()) == 32 * 32 - 1
    assert len({tuple(torch.nonzero(o[0] == 1.0)[0].tolist()) for o in shifted}) > 10  # offsets vary
    assert torch.equal(random_shift(image, 0, generator), image)


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist-classifier train --out"):
        MnistFeatures(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"x": json.dumps({})})
    with pytest.raises(ValueError, match="not an MNIST feature classifier"):
        load_classifier(tmp_path / "other.safetensors")
    net = MnistFeatures.__new__(MnistFeatures)
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, 32, 32\]"):
        MnistFeatures.__call__(net, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_training_is_reproducible_from_its_seed():
    torch.manual_seed(123)
    outside = torch.rand(1)
    (a, _), (b, _) = train(steps=5, batch_size=8, seed=3), train(steps=5, batch_size=8, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    (c, _) = train(steps=5, batch_size=8, seed=4)
    assert not torch.equal(a.head.weight, c.head.weight)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), outside)  # the caller's random state is left alone
