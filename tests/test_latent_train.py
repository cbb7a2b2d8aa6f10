"""Training on latent shards end to end, on the CPU with a tiny random VAE: a tiny latent UNet
trains (decoded sample grids, latent cards); a run killed with SIGKILL and resumed ends bit for
bit where an uninterrupted one ends; generation decodes to RGB images; evaluation measures
decoded pixels against the source images of the latent set; ``experiment=img512-xs-guide
data=latents debug=fast`` runs; bad data and a mismatched main model stop the run before any
training step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytest.importorskip("diffusers")

from conftest import kill_at_first_checkpoint

from autoguide.apps.config_tree import compose
from autoguide.apps.evaluate import run as evaluate
from autoguide.apps.generate import run as generate
from autoguide.core.typed_settings import ConfigError
from autoguide.data.datamodule import DataSettings
from autoguide.data.encode import EncodeSettings, encode_dataset, source_images
from autoguide.data.latents import read_manifest
from autoguide.data.vae import load_latent_codec, stability_vae_spec
from autoguide.ema.posthoc import PosthocEMA
from autoguide.eval import extractors
from autoguide.eval.features import FeatureExtractor, images_to_uint8
from autoguide.eval.frechet import frechet_distance, gaussian_stats
from autoguide.io import load_denoiser, read_card, save_model
from autoguide.nets import build_network
from autoguide.sample.batch import generate_images
from autoguide.sample.labels import class_labels
from autoguide.train.checkpoint import list_checkpoints
from autoguide.train.run import check_data
from autoguide.train.run_config import read_train_config

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, CHECKPOINT_STEPS = 16, 8, 4
TINY_NET = [
    "net.img_resolution=32",
    "net.label_dim=10",
    "net.model_channels=16",
    "net.channel_mult=[1,2]",
    "net.num_blocks=1",
    "net.attn_resolutions=[16]",
    "net.channels_per_head=8",
]


def train_command(run_dir: Path, assets: dict, workers: int) -> list[str]:
    kimg = CHECKPOINT_STEPS * BATCH / 1000
    return [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=img512-s",
        "data=latents",
        f"data.path={assets['set32']}",
        "data.standardize=dataset",
        f"data.num_workers={workers}",
        f"vae_path={assets['vae2']}",
        "trainer=cpu",
        "logger=none",
        f"run_dir={run_dir}",
        *TINY_NET,
        f"train.batch_size={BATCH}",
        f"train.duration_mi={STEPS * BATCH / 2**20}",
        "train.lr_rampup_mi=0.0001",
        "train.lr_ref_batches=20",
        "train.cond_drop_prob=0.1",
        f"train.checkpoint_kimg={kimg}",
        f"train.snapshot_kimg={kimg}",
        "train.sample_kimg=1000",
        "callbacks.sample_grid.num_images=10",
        "callbacks.sample_grid.num_steps=2",
        "callbacks.sample_grid.batch_size=10",
        "callbacks.checkpoint.keep=0",
        "hydra.job_logging.root.level=WARNING",
    ]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny networks; the 2-core machine is shared


def run_to_end(command: list[str], cwd: Path, env: dict[str, str] | None = ONE_THREAD) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def straight_run(latent_assets, tmp_path_factory) -> Path:
    """An uninterrupted tiny latent run (no loader workers)."""
    folder = tmp_path_factory.mktemp("latent-runs")
    run_to_end(train_command(folder / "straight", latent_assets, workers=0), folder)
    return folder / "straight"


def test_a_tiny_latent_unet_trains_with_decoded_grids_and_latent_cards(straight_run, latent_assets):
    card = read_card(straight_run / "final.safetensors")
    spec = json.loads((straight_run / "latent.json").read_text())
    manifest = read_manifest(latent_assets["set32"])
    assert card["nimg"] == STEPS * BATCH and card["latent"] == spec
    assert spec["raw_mean"] == manifest["stats"]["raw_mean"] and spec["final_std"] == 0.5
    assert spec["vae"] == manifest["vae"] and spec["vae"]["name"] == spec["vae_name"] == "vae2"  # the VAE's identity
    grid = Image.open(straight_run / "samples" / f"nimg-{STEPS * BATCH:012d}.png")
    assert grid.mode == "RGB" and grid.size == (10 * 64, 64)  # one decoded 64x64 image per class, not 32x32 latents
    # post-hoc EMA reconstructions carry the run's latent space too
    (path,) = PosthocEMA(straight_run).write([0.08], out_dir=straight_run / "ema")
    assert (
        read_card(path)["latent"] == spec
        and read_card(path)["latent"]["vae"]["weights_sha256"] == manifest["vae"]["weights_sha256"]
    )


def test_generate_eval_and_sweep_refuse_another_vae(straight_run, latent_assets, tmp_path):
    """``vae_path`` with another VAE than the model's is refused, naming both, before sampling."""
    from autoguide.apps.sweep import run as sweep

    model, other = straight_run / "final.safetensors", latent_assets["vae1"]
    refusal = (
        r"vae_path=.*vae1: this model works in the latent space of VAE 'vae2' .*, but that folder holds VAE 'vae1'"
    )
    common = [f"vae_path={other}", "seeds=0-3", "sampler.num_steps=2", "device=cpu", f"output.dir={tmp_path / 'out'}"]
    with pytest.raises(ValueError, match=refusal):
        generate(compose("generate", [f"model={model}", "progress=false", *common]))
    metrics = [
        "metrics=images",
        "metrics.features=[pooled]",
        f"metrics.reference={{name:latents,path:{latent_assets['set32']}}}",
    ]
    with pytest.raises(ValueError, match=refusal):
        evaluate(compose("eval", [f"model={model}", *metrics, "preview_images=0", *common]))
    with pytest.raises(ValueError, match=refusal):
        sweep(
            compose(
                "sweep",
                [f"main.model={model}", "guidance=cfg", "grid.weight=[2]", "select=fd_pooled", *metrics, *common],
            )
        )


@pytest.mark.slow  # about 17 s; test_train_resume kills and resumes on pixels by default (.ci/run runs -m slow)
@pytest.mark.timeout(900)
def test_sigkill_and_resume_on_latent_data_is_bit_exact(straight_run, latent_assets, tmp_path):
    killed = tmp_path / "killed"
    command = train_command(killed, latent_assets, workers=2)  # loader workers: the batches stay the same
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ONE_THREAD)
    saved = kill_at_first_checkpoint(proc, killed)
    assert saved and saved[-1][0] < STEPS * BATCH and not (killed / "final.safetensors").exists()

    run_to_end(command, tmp_path)  # the same command again: resume=auto
    for name in ["final.safetensors", *(f"phema/{p.name}" for p in (straight_run / "phema").glob("*.safetensors"))]:
        a, b = load_file(str(straight_run / name)), load_file(str(killed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert len(list((killed / "phema").glob("*.safetensors"))) == 2 * STEPS // CHECKPOINT_STEPS


def test_generate_decodes_latent_samples_to_rgb(straight_run, latent_assets, tmp_path):
    model = straight_run / "final.safetensors"
    generate(
        compose(
            "generate",
            [
                f"model={model}",
                f"vae_path={latent_assets['vae2']}",
                "seeds=0-5",
                "class_labels=random",
                "sampler.num_steps=2",
                "device=cpu",
                "progress=false",
                "output.formats=[npz,grid]",
                f"output.dir={tmp_path}",
            ],
        )
    )
    with np.load(tmp_path / "samples.npz") as npz:
        images = npz["images"]
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8  # [N, 3, 64, 64] decoded, as uint8 NHWC
    net = load_denoiser(model)
    seeds, classes = class_labels("random", list(range(6)), 10)
    latents = generate_images(net, seeds, classes, num_steps=2)
    decoded = load_latent_codec(net.card, latent_assets["vae2"]).decode(latents)
    assert decoded.shape == (6, 3, 64, 64)
    assert np.array_equal(images, images_to_uint8(decoded).permute(0, 2, 3, 1).numpy())


class PooledPixels(FeatureExtractor):
    """A test feature network for any RGB size: 16x16 average-pooled pixels (48 features at 64x64)."""

    name = "pooled"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(images.to(torch.float32), 16).flatten(1)


def test_eval_measures_decoded_pixels_against_the_source_images(straight_run, latent_assets, tmp_path, monkeypatch):
    (tmp_path / "pooled.weights").write_bytes(b"pooled pixels, no weights")
    weights = tmp_path / "pooled.weights"
    monkeypatch.setitem(extractors.EXTRACTORS, "pooled", lambda files, device: PooledPixels(weights, device))
    model = straight_run / "final.safetensors"
    report = evaluate(
        compose(
            "eval",
            [
                f"model={model}",
                f"vae_path={latent_assets['vae2']}",
                "metrics=images",
                "metrics.features=[pooled]",
                f"metrics.reference={{name:latents,path:{latent_assets['set32']}}}",
                "metrics.precision_recall=false",
                "metrics.num_workers=0",
                "seeds=0-59",
                "sampler.num_steps=2",
                "device=cpu",
                "preview_images=0",
                f"output.dir={tmp_path / 'out'}",
                f"cache_dir={tmp_path / 'cache'}",
            ],
        )
    )
    assert report["feature_networks"]["pooled"]["reference_images"] == 200
    # by hand: decoded samples vs the center-cropped source images, both through the extractor
    net = load_denoiser(model)
    seeds, classes = class_labels("random", list(range(60)), 10)
    decoded = load_latent_codec(net.card, latent_assets["vae2"]).decode(
        generate_images(net, seeds, classes, num_steps=2)
    )
    sources = torch.stack([image for image, _ in source_images(read_manifest(latent_assets["set32"]))])
    feature = PooledPixels(tmp_path / "pooled.weights", "cpu")
    generated, real = (feature(images_to_uint8(x)).double().numpy() for x in (decoded, sources))
    expected = frechet_distance(*gaussian_stats(generated), *gaussian_stats(real))
    assert report["metrics"]["fd_pooled"] == pytest.approx(expected, rel=1e-5)


def test_mnist_features_refuse_a_64px_model_before_any_reference_statistics(straight_run, latent_assets, tmp_path):
    """``metrics=mnist`` with a latent set as the reference (a mapping replaces the MNIST
    reference whole, not merged into it) on a model that makes 64x64 images."""
    cfg = compose(
        "eval",
        [
            f"model={straight_run / 'final.safetensors'}",
            f"vae_path={latent_assets['vae2']}",
            "metrics=mnist",
            f"metrics.reference={{name:latents,path:{latent_assets['set32']}}}",
            "seeds=0-3",
            "device=cpu",
            f"output.dir={tmp_path / 'out'}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
    )
    assert dict(cfg.metrics.reference) == {"name": "latents", "path": str(latent_assets["set32"])}
    with pytest.raises(
        ValueError,
        match=r"metrics.features has 'mnist', whose network takes 32x32 images, but the model makes "
        r"64x64 images",
    ):
        evaluate(cfg)
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def set64(latent_assets, tmp_path_factory) -> Path:
    """The digits as 64x64x4 latents (the one-block VAE) with ImageNet's 1000 classes: the shape
    and label width of the img512 networks."""
    out = tmp_path_factory.mktemp("set64") / "latents"
    settings = EncodeSettings(resolution=64, shard_size=100, batch_size=50, num_classes=1000)
    encode_dataset(latent_assets["src"], out, latent_assets["vae1"], settings, progress=False)
    return out


@pytest.mark.slow  # about 50 s: the full-size EDM2-XS on a CPU (.ci/run runs -m slow)
@pytest.mark.timeout(600)
def test_img512_xs_guide_debug_fast_on_latents(set64, latent_assets, tmp_path):
    """``python train.py experiment=img512-xs-guide data=latents data.path=<tiny set> debug=fast``,
    on a CPU: trainer=cpu (the experiment asks for a GPU), and one step of 2 images with a
    2-image, 2-step grid instead of debug=fast's 10 steps of 32 (the 125M-parameter EDM2-XS takes
    about 3 s per image and step on 2 cores)."""
    run_dir = tmp_path / "xs"
    run_to_end(
        [
            sys.executable,
            str(REPO / "train.py"),
            "experiment=img512-xs-guide",
            "data=latents",
            f"data.path={set64}",
            "debug=fast",
            "trainer=cpu",
            f"vae_path={latent_assets['vae1']}",
            f"run_dir={run_dir}",
            "data.num_workers=0",
            "train.batch_size=2",
            f"train.duration_mi={2 / 2**20}",
            "callbacks.sample_grid.num_images=2",
            "callbacks.sample_grid.num_steps=2",
            "callbacks.sample_grid.batch_size=2",
            "callbacks.checkpoint.keep=1",
        ],
        tmp_path,
        env=None,
    )
    card = read_card(run_dir / "final.safetensors")
    assert (
        card["nimg"] == 2
        and card["network"]["model_channels"] == 128
        and card["latent"]["raw_mean"] == [5.81, 3.25, 0.12, -2.15]
    )
    assert Image.open(run_dir / "samples" / "nimg-000000000002.png").mode == "RGB"


def test_bad_latent_data_stops_the_run_before_any_step(set64, latent_assets, tmp_path):
    run_dir = tmp_path / "refused"
    refused = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "experiment=img512-xs-guide",
            "data=latents",
            f"data.path={set64}",
            "trainer=cpu",
            f"vae_path={latent_assets['vae2']}",
            f"run_dir={run_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=ONE_THREAD,
    )
    assert refused.returncode == 2 and "latents/manifest.json works in the latent space of VAE 'vae1'" in refused.stderr
    assert not list_checkpoints(run_dir) and not (run_dir / "config.yaml").exists()


def test_a_guide_for_a_main_model_must_share_its_latent_space(set64, latent_assets, tmp_path):
    def main_file(name: str, label_dim: int) -> Path:
        config = {
            "arch": "unet",
            "img_resolution": 64,
            "img_channels": 4,
            "label_dim": label_dim,
            "model_channels": 16,
            "channel_mult": [1],
            "num_blocks": 1,
            "attn_resolutions": [],
        }
        card = {"network": config, "nimg": 2**31, "ema_std": 0.07, "source": "test", "latent": stability_vae_spec()}
        save_model(tmp_path / name, build_network(config), card)
        return tmp_path / name

    def check(main: Path, *overrides: str) -> None:
        cfg = compose(
            "train", ["experiment=img512-xs-guide-for-imported", f"data.path={set64}", f"main_model={main}", *overrides]
        )
        job = read_train_config(cfg)
        check_data(job.settings, job.data, job.main_model)

    main = main_file("main.safetensors", 1000)
    check(main)  # EDM2's standardisation, 64x64x4, 1000 classes: the released main's
    with pytest.raises(
        ConfigError, match=r"main_model=.*main.safetensors works in the latent space of VAE .*data.standardize=edm2"
    ):
        check(main, "data.standardize=dataset")
    with pytest.raises(
        ConfigError, match=r"main_model=.*small.safetensors has label_dim 10, but data 'latents' has 1000"
    ):
        check(main_file("small.safetensors", 10))
    with pytest.raises(
        ConfigError, match="main_model is not set: experiment img512-xs-guide-for-imported trains a guide for it"
    ):
        read_train_config(compose("train", ["experiment=img512-xs-guide-for-imported"]))


def test_the_network_check_names_a_latent_shape_mismatch(latent_assets):
    cfg = compose("train", ["experiment=img512-xs-guide", f"data.path={latent_assets['set32']}"])
    with pytest.raises(
        ConfigError, match=r"net.img_resolution=64 does not match data 'latents', which has 32x32 images"
    ):
        check_data(
            read_train_config(cfg).settings, DataSettings.from_mapping({**dict(cfg.data), "vae_path": None, "seed": 0})
        )
    cfg = compose(
        "train", ["experiment=img512-xs-guide", f"data.path={latent_assets['set32']}", "net.img_resolution=32"]
    )
    with pytest.raises(
        ConfigError, match=r"net.label_dim=1000 does not match data 'latents', which feeds 10 label classes"
    ):
        check_data(
            read_train_config(cfg).settings, DataSettings.from_mapping({**dict(cfg.data), "vae_path": None, "seed": 0})
        )
