"""Statistics files (EDM2 ``.pkl``, EDM ``.npz``) as references, the detectors as EDM2 uses them,
and the check that says which detectors run here: round trips, FD from a file against scipy, a
malicious pickle refused with nothing run, bad files refused before sampling, EDM2's DINOv2
preprocessing against its formula, the install line of an unusable Inception."""

import os
import pickle
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from autoguide.apps.config_tree import compose as compose_config
from autoguide.apps.evaluate import run
from autoguide.data.mnist import MNIST5k
from autoguide.eval import read_statistics, write_statistics
from autoguide.eval.dinov2 import MEAN, STD, dinov2_input
from autoguide.eval.frechet import frechet_distance
from autoguide.eval.inception import install_line
from autoguide.eval.statistics import StatisticsError
from autoguide.io import load_denoiser
from autoguide.sample import batch
from autoguide.sample.labels import class_labels
from tests.test_eval_evaluate import MNIST_NET, save_net, save_untrained_classifier

pytestmark = pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")


def random_stats(dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * dim, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim) + rng.standard_normal(dim)
    return {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}


def scipy_fd(a, b):
    """Float64 Fréchet distance with scipy's sqrtm (the reference implementation's formula)."""
    diff = a["mu"] - b["mu"]
    return diff @ diff + np.trace(a["sigma"] + b["sigma"] - 2 * scipy.linalg.sqrtm(a["sigma"] @ b["sigma"]).real)


def test_edm2_pkl_round_trip_is_plain_dicts_of_numpy_arrays(tmp_path):
    stats = {"fid": random_stats(16, 0), "fd_dinov2": random_stats(8, 1)}
    path = write_statistics(stats, tmp_path / "img.pkl")
    with open(path, "rb") as f:  # what EDM2's scripts do: a plain unpickle gives dicts of float64 arrays
        plain = pickle.load(f)
    assert type(plain) is dict and set(plain) == {"fid", "fd_dinov2"}
    assert (
        type(plain["fid"]) is dict
        and type(plain["fid"]["mu"]) is np.ndarray
        and plain["fid"]["sigma"].dtype == np.float64
    )
    back = read_statistics(path)
    for metric in stats:
        np.testing.assert_array_equal(back[metric]["mu"], stats[metric]["mu"])
        np.testing.assert_array_equal(back[metric]["sigma"], stats[metric]["sigma"])


def test_edm_npz_round_trip_and_layout(tmp_path):
    stats = random_stats(12, 2)
    path = write_statistics({"fid": stats}, tmp_path / "ref.npz")
    with np.load(path) as data:
        assert sorted(data.files) == ["mu", "sigma"]
    np.testing.assert_array_equal(read_statistics(path)["fid"]["sigma"], stats["sigma"])
    with pytest.raises(StatisticsError, match="FID statistics only"):
        write_statistics({"fid": stats, "fd_dinov2": stats}, tmp_path / "two.npz")


def test_pkl_of_any_pickle_protocol_and_numpy_1_reads(tmp_path):
    stats = {"fid": random_stats(6, 3)}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(stats, protocol=protocol))
        np.testing.assert_array_equal(read_statistics(path)["fid"]["mu"], stats["fid"]["mu"])
    # EDM2's released files were written by numpy 1, whose arrays pickle as numpy.core.multiarray._reconstruct
    old = pickle.dumps(stats, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in old
    (tmp_path / "numpy1.pkl").write_bytes(old)
    np.testing.assert_array_equal(read_statistics(tmp_path / "numpy1.pkl")["fid"]["sigma"], stats["fid"]["sigma"])


@pytest.mark.parametrize("dim", [8, 64])
def test_fd_from_statistics_files_equals_scipy(tmp_path, dim):
    a, b = random_stats(dim, 4), random_stats(dim, 5)
    write_statistics({"fid": a}, tmp_path / "a.pkl")
    write_statistics({"fid": b}, tmp_path / "b.npz")
    ra, rb = read_statistics(tmp_path / "a.pkl")["fid"], read_statistics(tmp_path / "b.npz")["fid"]
    fd = frechet_distance(ra["mu"], ra["sigma"], rb["mu"], rb["sigma"])
    assert fd == pytest.approx(scipy_fd(a, b), rel=1e-6)


class Payload:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "exec"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, kind):
    import builtins

    marker = tmp_path / "ran"
    payload = (
        Payload(os.system, f"touch {marker}")
        if kind == "os.system"
        else Payload(builtins.exec, f"open({str(marker)!r}, 'w')")
    )
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"fid": {"mu": payload, "sigma": np.eye(2)}}))
    expected = {"os.system": r"(posix|os)\.system", "exec": r"builtins\.exec"}[kind]
    with pytest.raises(StatisticsError, match=rf"evil\.pkl: refuses the global {expected}"):
        read_statistics(path)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["truncated", "not a dict", "no sigma", "nan", "shape", "suffix"])
def test_bad_statistics_files_are_refused_naming_the_file(tmp_path, case):
    good = {"fid": random_stats(4, 6)}
    path = tmp_path / ("stats.txt" if case == "suffix" else "stats.pkl")
    if case == "truncated":
        path.write_bytes(pickle.dumps(good)[:-40])
    elif case == "not a dict":
        path.write_bytes(pickle.dumps([1, 2]))
    elif case == "no sigma":
        path.write_bytes(pickle.dumps({"fid": {"mu": good["fid"]["mu"]}}))
    elif case == "nan":
        path.write_bytes(pickle.dumps({"fid": {"mu": np.full(4, np.nan), "sigma": np.eye(4)}}))
    elif case == "shape":
        path.write_bytes(pickle.dumps({"fid": {"mu": np.zeros(4), "sigma": np.eye(3)}}))
    else:
        path.write_bytes(pickle.dumps(good))
    with pytest.raises(StatisticsError, match=str(path)):
        read_statistics(path)


def pil_bicubic(channel: np.ndarray, size: int) -> np.ndarray:
    """PIL's antialiased bicubic resize (Keys' cubic, a = -0.5, support widened when shrinking) of one float channel."""
    return np.asarray(
        Image.fromarray(channel.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC)
    )


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 512, 384), (1, 1, 28, 28)])
def test_dinov2_input_is_edm2s_preprocessing(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rgb = images.expand(-1, 3, -1, -1).numpy().astype(np.float32)  # gray is repeated to RGB
    resized = np.stack([[pil_bicubic(c, 224) for c in image] for image in rgb])
    expected = (resized / 255 - np.array(MEAN).reshape(1, 3, 1, 1)) / np.array(STD).reshape(1, 3, 1, 1)
    got = dinov2_input(images)
    assert got.shape == (shape[0], 3, 224, 224) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-4)
    # the formula's order (resize the 0..255 values, then / 255) as EDM2 writes it
    direct = F.interpolate(images.expand(-1, 3, -1, -1).float(), size=224, mode="bicubic", antialias=True) / 255
    torch.testing.assert_close(got, (direct - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))


def test_install_line_matches_the_torch_build():
    assert install_line("2.13.0+cpu", None) == (
        "pip install --no-deps torch-fidelity==0.4.0 torchvision==0.28.0 --extra-index-url https://download.pytorch.org/whl/cpu"
    )
    assert install_line("2.7.1", "12.8").endswith(
        "torchvision==0.22.1 --extra-index-url https://download.pytorch.org/whl/cu128"
    )


# A torch-fidelity whose import fails as it does where torchvision's operators do not load.
BROKEN_FIDELITY = "raise RuntimeError('operator torchvision::nms does not exist')\n"


@pytest.fixture(scope="module")
def mnist_setup(tmp_path_factory):
    """A tiny MNIST model, a feature classifier, and the FID-style statistics of the MNIST-5k test split."""
    root = tmp_path_factory.mktemp("stats")
    model = save_net(root / "mnist.safetensors", MNIST_NET)
    torch.manual_seed(1)
    classifier = save_untrained_classifier(root / "clf.safetensors", 24)
    with torch.no_grad():
        real = classifier.features(MNIST5k("test").images).double().numpy()
    reference = {"mu": real.mean(0), "sigma": np.cov(real, rowvar=False)}
    write_statistics({"fd_mnist": reference, "fid": random_stats(16, 7)}, root / "mnist-test.pkl")  # fid: not measured
    broken = root / "broken_fidelity" / "torch_fidelity"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(BROKEN_FIDELITY)
    return root, model, classifier, reference


def eval_cfg(root, out, *extra):
    return compose_config(
        "eval",
        [
            f"model={root / 'mnist.safetensors'}",
            "sampler.num_steps=3",
            "seeds=0-63",
            "chunk_images=40",
            "device=cpu",
            f"output.dir={out}",
            f"cache_dir={root / 'cache'}",
            "preview_images=0",
            f"extractors.mnist.path={root / 'clf.safetensors'}",
            f"metrics.reference={root / 'mnist-test.pkl'}",
            *extra,
        ],
    )


def test_eval_against_a_statistics_file_equals_scipy_and_writes_edm2_statistics(mnist_setup, tmp_path, caplog):
    root, model, classifier, reference = mnist_setup
    with caplog.at_level("INFO"):
        report = run(eval_cfg(root, tmp_path / "out"))
    assert set(report["metrics"]) == {"fd_mnist"}  # precision/recall need features: skipped, saying why
    assert "precision/recall skipped" in caplog.text and "detector mnist: usable" in caplog.text
    seeds, classes = class_labels("random", list(range(64)), 10)
    images = batch.generate_images(load_denoiser(model), seeds, classes, num_steps=3)
    with torch.no_grad():
        gen = classifier.features(torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1).double().numpy()
    generated = {"mu": gen.mean(0), "sigma": np.cov(gen, rowvar=False)}
    assert report["metrics"]["fd_mnist"] == pytest.approx(scipy_fd(generated, reference), rel=1e-4)
    written = read_statistics(report["sets"][0]["statistics"])  # the generated images' statistics, EDM2 layout
    np.testing.assert_allclose(written["fd_mnist"]["mu"], generated["mu"], rtol=1e-5, atol=1e-6)
    info = report["feature_networks"]["mnist"]
    assert info["reference"] == str(root / "mnist-test.pkl") and len(info["reference_sha256"]) == 64
    assert report["reference_statistics"] is None and report["code_revision"]
    csv = (tmp_path / "out" / "metrics.csv").read_text().splitlines()
    assert csv[0] == "row,seeds,images,fd_mnist" and csv[1].startswith("set0,0-63,64,")


@pytest.mark.parametrize("case", ["dimension", "missing key", "nan"])
def test_bad_statistics_are_refused_before_sampling(mnist_setup, tmp_path, monkeypatch, case):
    root = mnist_setup[0]
    bad = tmp_path / "bad.pkl"
    stats = {
        "dimension": {"fd_mnist": random_stats(10, 8)},
        "missing key": {"fid": random_stats(4, 8)},
        "nan": {"fd_mnist": {"mu": np.full(24, np.nan), "sigma": np.eye(24)}},
    }[case]
    bad.write_bytes(pickle.dumps(stats))
    monkeypatch.setattr(batch, "edm_sampler", lambda *a, **k: pytest.fail("sampled before refusing the statistics"))
    message = {
        "dimension": "10-dimensional, but mnist features have 24",
        "missing key": "holds no 'fd_mnist'",
        "nan": "NaN",
    }[case]
    with pytest.raises(StatisticsError, match=message):
        run(eval_cfg(root, tmp_path / "out", f"metrics.reference={bad}"))


def test_unusable_inception_is_named_with_its_install_line_before_sampling(mnist_setup, tmp_path, monkeypatch, caplog):
    root = mnist_setup[0]
    monkeypatch.syspath_prepend(str(root / "broken_fidelity"))
    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)
    monkeypatch.setattr(batch, "edm_sampler", lambda *a, **k: pytest.fail("sampled before checking the detectors"))
    cfg = eval_cfg(root, tmp_path, "metrics.features=[mnist,inception]")
    with caplog.at_level("INFO"), pytest.raises(ValueError) as error:
        run(cfg)
    assert "detector mnist: usable" in caplog.text
    message = str(error.value)
    assert (
        message.startswith("detector inception is not usable here")
        and "operator torchvision::nms does not exist" in message
    )
    assert message.endswith(f"install it with `{install_line()}`")
    assert not (tmp_path / "metrics.json").exists()
