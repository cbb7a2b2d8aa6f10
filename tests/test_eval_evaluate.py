"""``autoguide-eval`` end to end on tiny models: the reported metrics equal an independent
computation from the same seeds, seed sets are disjoint and recorded, the CLI runs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from autoguide.apps.config_tree import compose as compose_config
from autoguide.apps.evaluate import run
from autoguide.core.typed_settings import ConfigError, from_mapping
from autoguide.data.mnist import MNIST5k
from autoguide.eval.evaluate import EvalPlan
from autoguide.eval.evaluator import FdInfinitySettings, MetricsSettings
from autoguide.eval.frechet import frechet_distance_infinity
from autoguide.eval.mnist_classifier import FORMAT, MnistClassifier, save_classifier
from autoguide.eval.toy_metrics import ToyMetricsConfig, toy_metrics
from autoguide.io import load_denoiser, save_model
from autoguide.nets import build_network
from autoguide.sample import batch
from autoguide.sample.labels import class_labels
from autoguide.sample.seeds import format_seeds

# untrained classifiers have dead ReLU units (zero-variance features): scipy's sqrtm warns, stays accurate
pytestmark = pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")

TOY_NET = {"arch": "mlp", "img_channels": 2, "label_dim": 2, "width": 16, "depth": 1, "sigma_data": 0.5}
MNIST_NET = {
    "arch": "unet",
    "img_resolution": 32,
    "img_channels": 1,
    "label_dim": 10,
    "model_channels": 8,
    "channel_mult": [1, 1],
    "num_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def features_by_hand(classifier, images):
    """Classifier features of ``images`` (float, [-1, 1], uint8-rounded) and of the MNIST-5k test split."""
    with torch.no_grad():
        gen = classifier.features(torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1).double().numpy()
        real = classifier.features(MNIST5k("test").images).double().numpy()
    return gen, real


def direct_fd(classifier, images):
    """FD of ``images`` against the MNIST-5k test split, by hand: numpy statistics and scipy's sqrtm."""
    gen, real = features_by_hand(classifier, images)
    s1, s2 = np.cov(gen, rowvar=False), np.cov(real, rowvar=False)
    return np.sum((gen.mean(0) - real.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)


def save_untrained_classifier(path, feature_dim: int) -> MnistClassifier:
    """An untrained MNIST feature classifier (seeded by the caller) saved with its card."""
    classifier = MnistClassifier(feature_dim=feature_dim).eval()
    save_classifier(path, classifier, {"format": FORMAT, "arch": classifier.arch})
    return classifier


def save_net(path, config, seed=0):
    torch.manual_seed(seed)
    net = build_network(config)
    with torch.no_grad():  # untrained gains are zero; random ones make the outputs depend on the weights
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)
    save_model(path, net, {"network": net.config, "nimg": 0, "ema_std": None, "source": "test"})
    return path


def test_seed_helpers():
    assert EvalPlan(seeds=[0, 1, 2, 7]).set_seeds(0) == [0, 1, 2, 7]
    assert EvalPlan(seeds=[0, 1, 2, 7]).set_seeds(2) == [16, 17, 18, 23]
    assert format_seeds([7, 0, 1, 2, 9, 10]) == "0-2,7,9-10"
    assert format_seeds([5]) == "5"


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    return save_net(tmp_path_factory.mktemp("toy") / "toy.safetensors", TOY_NET)


def toy_cfg(model, out, *extra):
    return compose_config(
        "eval",
        [
            f"model={model}",
            "metrics=toy2d",
            "metrics.toy.num_density_samples=2000",
            "sampler.num_steps=4",
            "seeds=0-149",
            "class_labels=0",
            "device=cpu",
            f"output.dir={out}",
            "preview_images=16",
            *extra,
        ],
    )


def test_toy_report_matches_direct_computation(toy_model, tmp_path):
    report = run(toy_cfg(toy_model, tmp_path, "seed_sets=2"))
    assert [s["seeds"] for s in report["sets"]] == ["0-149", "150-299"]
    net = load_denoiser(toy_model)
    for index, seeds in enumerate([range(150), range(150, 300)]):
        points = batch.generate_images(net, list(seeds), [0] * 150, num_steps=4)
        expected = toy_metrics(points, [0] * 150, ToyMetricsConfig(num_density_samples=2000))
        assert report["sets"][index]["metrics"] == pytest.approx(expected)
    sets = [s["metrics"] for s in report["sets"]]
    assert report["metrics"]["toy_logp"] == max(s["toy_logp"] for s in sets)
    assert report["metrics"]["toy_outliers"] == min(s["toy_outliers"] for s in sets)
    assert report["mean"]["toy_recall"] == pytest.approx(np.mean([s["toy_recall"] for s in sets]))
    saved = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: inf written as a string
    assert saved["sampler"]["S_max"] == "inf" and saved["metrics"] == report["metrics"]
    assert (tmp_path / "scatter.png").is_file() and (tmp_path / "evaluate.yaml").is_file()


def test_toy_model_refuses_image_metrics(toy_model, tmp_path):
    cfg = compose_config("eval", [f"model={toy_model}", "metrics=mnist", "device=cpu", f"output.dir={tmp_path}"])
    with pytest.raises(ValueError, match="metrics=toy2d"):
        run(cfg)


@pytest.mark.parametrize("fd_infinity", [None, (3, 0.5)])
def test_mnist_fd_and_precision_recall_match_direct_computation(tmp_path, fd_infinity):
    model = save_net(tmp_path / "mnist.safetensors", MNIST_NET)
    torch.manual_seed(1)
    # fewer features than images: regular covariances
    classifier = save_untrained_classifier(tmp_path / "clf.safetensors", 24)
    cfg = compose_config(
        "eval",
        [
            f"model={model}",
            "sampler.num_steps=3",
            "seeds=0-63",
            "chunk_images=40",
            "device=cpu",
            f"output.dir={tmp_path / 'out'}",
            f"cache_dir={tmp_path / 'cache'}",
            "preview_images=0",
            f"extractors.mnist.path={tmp_path / 'clf.safetensors'}",
            "metrics.reference.split=test",
            *(
                [f"metrics.fd_infinity={{points:{fd_infinity[0]},min_fraction:{fd_infinity[1]}}}"]
                if fd_infinity
                else []
            ),
        ],
    )
    report = run(cfg)
    metrics = report["metrics"]

    # independent: the same 64 images, classifier features by hand, FD with scipy's sqrtm
    seeds, classes = class_labels("random", list(range(64)), 10)
    images = batch.generate_images(load_denoiser(model), seeds, classes, num_steps=3)
    assert metrics["fd_mnist"] == pytest.approx(direct_fd(classifier, images), rel=1e-4)
    assert set(metrics) == {"fd_mnist", "precision_mnist", "recall_mnist", *(["fd_inf_mnist"] if fd_infinity else [])}
    if fd_infinity:  # the extrapolation on the same features (subsets of 32, 48, 64 images)
        gen, real = features_by_hand(classifier, images)
        expected = frechet_distance_infinity(gen, real.mean(0), np.cov(real, rowvar=False), *fd_infinity)
        assert metrics["fd_inf_mnist"] == pytest.approx(expected, rel=1e-4)
    assert 0 <= metrics["precision_mnist"] <= 1 and 0 <= metrics["recall_mnist"] <= 1
    assert report["feature_networks"]["mnist"]["reference_images"] == 500
    assert len(list((tmp_path / "cache" / "refs").glob("mnist5k-*-mnist-*.npz"))) == 1


def test_cli_runs(toy_model, tmp_path):
    out = tmp_path / "cli"
    args = [
        f"model={toy_model}",
        "metrics=toy2d",
        "metrics.toy.num_density_samples=1000",
        "sampler.num_steps=2",
        "seeds=0-49",
        "class_labels=1",
        "device=cpu",
        f"output.dir={out}",
        "output.formats=[]",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "autoguide.apps.evaluate", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["class_labels"] == 1 and report["sets"][0]["seeds"] == "0-49"
    assert json.loads(done.stdout.strip().splitlines()[-1])["metrics"] == report["metrics"]


class GrayCodec(torch.nn.Module):
    """Stands in for the VAE: a 'latent' [N, 4, 32, 32] decodes to its first channel."""

    factor = 1

    def decode(self, latents):
        return latents[:, :1].clamp(-1, 1)


def test_latent_models_are_decoded_before_measuring(tmp_path, monkeypatch):
    import autoguide.data.vae as latent_module

    asked = []
    monkeypatch.setattr(
        latent_module, "load_latent_codec", lambda card, vae_path, device: asked.append((card, vae_path)) or GrayCodec()
    )
    latent_module._cached_codec.cache_clear()
    torch.manual_seed(0)
    net = build_network({**MNIST_NET, "img_channels": 4})
    spec = {"type": "stability_vae", "vae_name": "test"}
    save_model(
        tmp_path / "latent.safetensors",
        net,
        {"network": net.config, "nimg": 0, "ema_std": None, "source": "test", "latent": spec},
    )
    classifier = save_untrained_classifier(tmp_path / "clf.safetensors", 16)
    report = run(
        compose_config(
            "eval",
            [
                f"model={tmp_path / 'latent.safetensors'}",
                "vae_path=/vae",
                "sampler.num_steps=2",
                "seeds=0-39",
                "device=cpu",
                f"output.dir={tmp_path / 'out'}",
                f"cache_dir={tmp_path / 'cache'}",
                "preview_images=4",
                f"extractors.mnist.path={tmp_path / 'clf.safetensors'}",
                "metrics.reference.split=test",
                "metrics.precision_recall=false",
            ],
        )
    )
    assert asked == [({"latent": spec}, "/vae")]  # one VAE load for the metrics and the preview
    latents = batch.generate_images(
        load_denoiser(tmp_path / "latent.safetensors"),
        list(range(40)),
        class_labels("random", list(range(40)), 10)[1],
        num_steps=2,
    )
    assert report["metrics"]["fd_mnist"] == pytest.approx(direct_fd(classifier, latents[:, :1]), rel=1e-4)
    assert (tmp_path / "out" / "grid.png").is_file()


def test_fd_infinity_settings_name_the_bad_value():
    def metrics(fd_infinity):
        return from_mapping(MetricsSettings, {"features": ["mnist"], "fd_infinity": fd_infinity}, "metrics")

    assert metrics(None).fd_infinity is None
    assert metrics({"points": 15, "min_fraction": 0.2}).fd_infinity == FdInfinitySettings(points=15, min_fraction=0.2)
    with pytest.raises(ConfigError, match=r"metrics.fd_infinity.min_fraction is not set"):
        metrics({"points": 3})
    with pytest.raises(ConfigError, match=r"metrics.fd_infinity: unknown key\(s\) \['pts'\]"):
        metrics({"pts": 3, "min_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"got 1 and 0\.5"):
        metrics({"points": 1, "min_fraction": 0.5})


def test_too_few_images_for_fd_infinity_fail_before_sampling(tmp_path, monkeypatch):
    # 40 images, subsets from 20: not above the 24 features; refused before any image is made
    model = save_net(tmp_path / "mnist.safetensors", MNIST_NET)
    save_untrained_classifier(tmp_path / "clf.safetensors", 24)
    cfg = compose_config(
        "eval",
        [
            f"model={model}",
            "seeds=0-39",
            "device=cpu",
            f"output.dir={tmp_path / 'out'}",
            f"cache_dir={tmp_path / 'cache'}",
            "preview_images=0",
            f"extractors.mnist.path={tmp_path / 'clf.safetensors'}",
            "metrics.reference.split=test",
            "metrics.fd_infinity={points:3,min_fraction:0.5}",
        ],
    )
    monkeypatch.setattr(
        "autoguide.eval.evaluate.sample_chunks", lambda *a, **k: pytest.fail("sampled before the check")
    )
    with pytest.raises(ValueError, match="feature dimension 24"):
        run(cfg)
