"""The EDM2 latent codec around a small, randomly initialised diffusers AutoencoderKL (no download)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image
from tiny import TINY_RGB_UNET

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL

from autoguide.data.vae import (
    EDM2_RAW_STD,
    LatentCodec,
    check_raw_std,
    check_same_latent_space,
    check_vae_path,
    load_latent_codec,
    stability_vae_spec,
    vae_identity,
)
from autoguide.io import load_denoiser, save_model
from autoguide.nets import build_network

SMALL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}
LATENT_UNET = {**TINY_RGB_UNET, "img_channels": 4, "label_dim": 0, "channels_per_head": 16}
"""An unconditional 8x8 UNet on four latent channels."""
RAW_MEAN = torch.tensor([5.81, 3.25, 0.12, -2.15], dtype=torch.float64)
RAW_STD = torch.tensor([4.17, 4.62, 3.71, 3.28], dtype=torch.float64)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKL(**SMALL_VAE).eval().requires_grad_(False)


def channelwise(v):
    return v.to(torch.float32)[None, :, None, None]


def test_scale_and_bias_standardise_the_raw_latents(vae):
    codec = LatentCodec(vae)
    # z = (z_raw - raw_mean) / raw_std * 0.5 must equal z_raw * scale + bias for any z_raw.
    z_raw = torch.randn(64, 4, dtype=torch.float64) * RAW_STD + RAW_MEAN
    expected = (z_raw - RAW_MEAN) / RAW_STD * 0.5
    assert torch.allclose(z_raw * codec.scale.double() + codec.bias.double(), expected, atol=1e-6)
    assert codec.scale.dtype == torch.float32


def test_decode_inverts_the_standardisation_and_maps_to_minus_one_one(vae):
    codec = LatentCodec(vae, batch_size=2)
    z = torch.randn(5, 4, 8, 8)
    raw = z * channelwise(RAW_STD / 0.5) + channelwise(RAW_MEAN)
    with torch.no_grad():
        expected = vae.decode(raw).sample.clamp(0, 1) * 2 - 1
    images = codec.decode(z)
    assert images.shape == (5, 3, 16, 16)
    assert torch.allclose(images, expected, atol=1e-4)
    assert ((images > -1) & (images < 1)).float().mean() > 0.1  # not all clamped: the check has teeth


def test_encode_feeds_zero_one_pixels_and_samples_the_posterior(vae):
    codec = LatentCodec(vae, batch_size=3)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode((images + 1) / 2).latent_dist
    mean_latents = (posterior.mean - channelwise(RAW_MEAN)) / channelwise(RAW_STD) * 0.5
    assert torch.allclose(codec.encode(images, sample=False), mean_latents, atol=1e-4)
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(7))
    sampled = (posterior.mean + posterior.std * eps - channelwise(RAW_MEAN)) / channelwise(RAW_STD) * 0.5
    got = codec.encode(images, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(got, sampled, atol=1e-4)
    assert not torch.allclose(got, mean_latents, atol=1e-4)


def test_codec_from_card_and_local_folder(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    card = {"latent": stability_vae_spec()}
    codec = load_latent_codec(card, tmp_path / "vae")
    z = torch.randn(2, 4, 8, 8)
    assert torch.allclose(codec.decode(z), LatentCodec(vae).decode(z), atol=1e-5)
    assert load_latent_codec({"latent": None}, None) is None
    with pytest.raises(ValueError, match="latent space of VAE 'stabilityai/sd-vae-ft-mse': pass vae_path="):
        load_latent_codec(card, None)
    with pytest.raises(FileNotFoundError, match=r"no config.json"):
        load_latent_codec(card, tmp_path)
    with pytest.raises(ValueError, match="expected type 'stability_vae'"):
        load_latent_codec({"latent": {**stability_vae_spec(), "type": "other"}}, tmp_path / "vae")
    with pytest.raises(ValueError, match="need 4 values"):
        LatentCodec(vae, raw_mean=[0.0] * 3, raw_std=[1.0] * 3)


def test_latent_model_output_decodes_to_rgb(vae, tmp_path):
    """The path generate takes for a latent model: denoise latents, then decode to RGB."""
    card = {"network": LATENT_UNET, "nimg": 0, "ema_std": None, "source": "test", "latent": stability_vae_spec()}
    save_model(tmp_path / "m.safetensors", build_network(LATENT_UNET), card)
    net = load_denoiser(tmp_path / "m.safetensors")
    vae.save_pretrained(tmp_path / "vae")
    codec = load_latent_codec(net.card, tmp_path / "vae")
    latents = net(torch.randn(3, 4, 8, 8) * 80, torch.tensor(80.0))
    images = codec.decode(latents)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1


def test_the_vae_is_identified_by_hashes_and_checked_before_decoding(vae, tmp_path, caplog):
    vae.save_pretrained(tmp_path / "mine")
    torch.manual_seed(1)
    AutoencoderKL(**SMALL_VAE).save_pretrained(tmp_path / "other")
    mine = vae_identity(tmp_path / "mine")
    assert mine["name"] == "mine" and mine["folder"] == "mine"  # save_pretrained records no hub name: the folder's
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "_name_or_path": "someone/their-vae"}))
    assert vae_identity(tmp_path / "other")["name"] == "someone/their-vae"
    spec = stability_vae_spec("mine", vae=mine)
    assert check_vae_path(spec, tmp_path / "mine") == mine
    with pytest.raises(
        ValueError,
        match=r"vae_path=.*other: this model works in the latent space of VAE 'mine' \(folder 'mine', "
        r"config sha256 [0-9a-f]{12}, weights sha256 [0-9a-f]{12}\), but that folder holds VAE 'other'",
    ):
        load_latent_codec({"latent": spec}, tmp_path / "other")
    with caplog.at_level(logging.WARNING, logger="autoguide.data.vae"):  # an imported release: no hashes
        check_vae_path(stability_vae_spec(), tmp_path / "other")
    assert "names no VAE hashes (an imported release): assuming vae_path=" in caplog.text
    assert "is stabilityai/sd-vae-ft-mse" in caplog.text


def test_a_folder_that_is_no_vae_is_named_without_a_download_hint(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")  # an image folder given as vae_path
    with pytest.raises(
        FileNotFoundError, match=r"no config.json there; expected a diffusers AutoencoderKL folder"
    ) as error:
        vae_identity(tmp_path)
    assert "huggingface-cli" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir"):
        vae_identity(tmp_path / "missing", "stabilityai/sd-vae-ft-mse")


def test_main_and_guide_of_different_vaes_are_refused_together():
    a = stability_vae_spec("a", vae={"name": "a", "folder": "a", "config_sha256": "1" * 64, "weights_sha256": "2" * 64})
    b = stability_vae_spec("b", vae={"name": "b", "folder": "b", "config_sha256": "1" * 64, "weights_sha256": "3" * 64})
    check_same_latent_space(a, dict(a), "main", "guide")
    check_same_latent_space(a, stability_vae_spec(), "main", "guide")  # an imported release has no hashes to compare
    with pytest.raises(
        ValueError, match=r"main works in the latent space of VAE 'a' .*, but guide in the latent space of VAE 'b'"
    ):
        check_same_latent_space(a, b, "main", "guide")
    with pytest.raises(ValueError, match=r"main works in the latent space .* but guide in pixel space"):
        check_same_latent_space(a, None, "main", "guide")


def test_a_guide_of_another_vae_cannot_guide_the_main(tmp_path):
    from autoguide.sample.guidance import Autoguidance

    for name, weights in (("main", "2"), ("guide", "3")):
        vae = {"name": name, "folder": name, "config_sha256": "1" * 64, "weights_sha256": weights * 64}
        card = {
            "network": LATENT_UNET,
            "nimg": 0,
            "ema_std": None,
            "source": "test",
            "latent": stability_vae_spec(name, vae=vae),
        }
        save_model(tmp_path / f"{name}.safetensors", build_network(LATENT_UNET), card)
    main, guide = (load_denoiser(tmp_path / f"{n}.safetensors") for n in ("main", "guide"))
    Autoguidance(guide=load_denoiser(tmp_path / "main.safetensors"), weight=2.0).validate(main, False)
    with pytest.raises(
        ValueError,
        match=r"the main model works in the latent space of VAE 'main' .* but autoguidance's negative "
        "model in the latent space of VAE 'guide'",
    ):
        Autoguidance(guide=guide, weight=2.0).validate(main, False)


def test_raw_std_far_from_edm2s_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="autoguide.data.vae"):
        check_raw_std([s * 1.9 for s in EDM2_RAW_STD], "near")
        assert not caplog.records
        check_raw_std([1.0, 1.16, 1.1, 1.05], "set/manifest.json")
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "set/manifest.json: the latents' raw std per channel [1.0, 1.16, 1.1, 1.05] is "
    )
    assert "consider data.standardize=dataset" in record.getMessage()
