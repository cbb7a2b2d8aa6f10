"""Feature extractors and cached reference statistics: conversion to uint8, the reference cache
(keyed by the extractor file's hash), and offline loading of DINOv2/Inception with clear errors."""

import hashlib
import textwrap

import numpy as np
import pytest
import torch

from autoguide.core.typed_settings import ConfigError, from_mapping
from autoguide.data.mnist import MNIST5k
from autoguide.eval.dinov2 import DinoV2Features
from autoguide.eval.extractors import ExtractorFiles, build_extractor
from autoguide.eval.features import FeatureExtractor, as_rgb, images_to_uint8
from autoguide.eval.reference import reference_stats
from autoguide.io import file_sha256

TEST_SPLIT = {"name": "mnist5k", "split": "test", "channels": 1}


class PixelStats(FeatureExtractor):
    """A cheap, fully known extractor: per-image mean and std of each quarter of the image."""

    name = "pixelstats"

    def __init__(self, weights_file, device="cpu"):
        super().__init__(weights_file, device)
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        x = images.to(torch.float64)
        quarters = [x[:, :, :16, :16], x[:, :, :16, 16:], x[:, :, 16:, :16], x[:, :, 16:, 16:]]
        return torch.cat([torch.stack([q.mean((1, 2, 3)), q.std((1, 2, 3))], 1) for q in quarters], 1)


def test_images_to_uint8_formula():
    x = torch.tensor([-1.5, -1.0, -0.001, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 7)
    expected = np.clip(np.round((x.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(images_to_uint8(x).numpy(), expected)
    assert as_rgb(torch.zeros(2, 1, 4, 4)).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="1 or 3"):
        as_rgb(torch.zeros(2, 2, 4, 4))


def test_file_sha256(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_reference_stats_cached_and_keyed_by_extractor_file(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"version 1")
    extractor = PixelStats(weights)
    stats = reference_stats(TEST_SPLIT, extractor, tmp_path / "refs", max_features=100, batch_size=64)
    # independent: every real image's features in one go, numpy mean/cov
    u8 = torch.round((MNIST5k("test").images + 1) * 127.5).to(torch.uint8)
    direct = extractor(u8).numpy()
    np.testing.assert_allclose(stats.mu, direct.mean(0), rtol=1e-6)  # features are kept in float32
    np.testing.assert_allclose(stats.sigma, np.cov(direct, rowvar=False), rtol=1e-5, atol=1e-5)
    assert stats.num_images == 500 and stats.features.shape == (100, 8)
    assert all(any(np.allclose(row, d, atol=1e-3) for d in direct) for row in stats.features[:5])
    assert stats.path.is_file() and extractor.sha256[:12] in stats.path.name

    calls = extractor.calls
    again = reference_stats(TEST_SPLIT, extractor, tmp_path / "refs", max_features=100, batch_size=64)
    assert extractor.calls == calls  # read from the cache, nothing recomputed
    np.testing.assert_array_equal(again.sigma, stats.sigma)

    weights.write_bytes(b"version 2")  # new weights: new key, fresh statistics
    renewed = reference_stats(TEST_SPLIT, PixelStats(weights), tmp_path / "refs", max_features=100, batch_size=64)
    assert renewed.path != stats.path and len(list((tmp_path / "refs").glob("*.npz"))) == 2


def files(**nodes) -> ExtractorFiles:
    """An ``extractors`` node with ``nodes`` (``inception={...}`` ...), as the apps read it."""
    return from_mapping(ExtractorFiles, nodes, "extractors")


def test_build_extractor_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"metrics\.features: feature extractor 'clip' is unknown"):
        build_extractor("clip", ExtractorFiles())
    with pytest.raises(ConfigError, match=r"extractors.inception.weights is not set"):
        build_extractor("inception", ExtractorFiles())
    with pytest.raises(FileNotFoundError, match=r"weights-inception-2015-12-05.*never downloaded"):
        build_extractor("inception", files(inception={"weights": str(tmp_path / "nope.pth")}))
    with pytest.raises(FileNotFoundError, match=r"hubconf\.py.*facebookresearch/dinov2"):
        build_extractor("dinov2", files(dinov2={"repo": str(tmp_path), "weights": str(tmp_path / "w.pth")}))


HUBCONF = textwrap.dedent(
    """
    import torch

    class TinyViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, 6, 14, stride=14)

        def forward(self, x):
            assert x.shape[1:] == (3, 224, 224), x.shape
            return self.proj(x).mean((2, 3))

    def dinov2_vitl14(pretrained=True):
        if pretrained:
            raise RuntimeError("would download")
        return TinyViT()
    """
)


@pytest.fixture
def fake_hub(tmp_path):
    repo = tmp_path / "dinov2"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(0)
    state = {"proj.weight": torch.randn(6, 3, 14, 14), "proj.bias": torch.randn(6)}
    torch.save(state, tmp_path / "dinov2_vitl14_pretrain.pth")
    return repo, tmp_path / "dinov2_vitl14_pretrain.pth", state


def test_dinov2_from_local_hub_folder(fake_hub):
    repo, weights, state = fake_hub
    extractor = build_extractor("dinov2", files(dinov2={"repo": str(repo), "weights": str(weights)}))
    assert isinstance(extractor, DinoV2Features)
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    features = extractor(images)
    # independent preprocessing: [0, 1], RGB, bicubic 224 (antialiased), ImageNet normalisation
    x = images.repeat(1, 3, 1, 1).float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    expected = torch.nn.functional.conv2d(x, state["proj.weight"], state["proj.bias"], stride=14).mean((2, 3))
    torch.testing.assert_close(features, expected)


class Payload:
    """Any non-tensor object: the weights-only unpickler must refuse it."""


def test_dinov2_weights_are_never_unpickled_freely(fake_hub):
    repo, weights, _ = fake_hub
    torch.save({"proj.weight": Payload()}, weights)
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        DinoV2Features(repo, weights)


def test_inception_reads_local_weights_weights_only(tmp_path, monkeypatch):
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = fidelity.FeatureExtractorInceptionV3
    monkeypatch.setattr(cls, "load_state_dict", lambda self, state: None)  # build an untrained net once
    torch.save(
        cls("x", ["2048"], feature_extractor_weights_path=str(_empty(tmp_path))).state_dict(),
        tmp_path / "inception.pth",
    )
    monkeypatch.undo()
    extractor = build_extractor("inception", files(inception={"weights": str(tmp_path / "inception.pth")}))
    assert extractor(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)).shape == (2, 2048)
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        build_extractor("inception", files(inception={"weights": str(tmp_path / "evil.pth")}))


def _empty(folder):
    torch.save({}, folder / "empty.pth")
    return folder / "empty.pth"
