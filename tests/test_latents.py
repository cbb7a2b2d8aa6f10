"""Latent shards (``autoguide.data.encode``, ``autoguide.data.latents``) with a tiny random
AutoencoderKL and MNIST digits as 3-channel 64x64 images: what is stored equals a direct VAE
encode, the standardised draws have the target statistics, every draw is a function of (seed,
stream position) only, the manifest says what the set is, bad input fails with one error naming
the file, and several processes split the shards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from autoguide.data.encode import CroppedImages, EncodeSettings, encode_dataset, open_images
from autoguide.data.images import adm_center_crop
from autoguide.data.latents import LatentShardDataset, read_manifest
from autoguide.data.registry import build_dataset, build_reference_dataset
from autoguide.data.stream import TrainStream, item_seed
from autoguide.data.vae import EDM2_RAW_MEAN, load_vae
from autoguide.io.digest import file_sha256
from autoguide.io.records import SpecConflict
from autoguide.runtime.process import RankInfo

SETTINGS = EncodeSettings(resolution=64, shard_size=64, batch_size=16, dtype="float32")


def copy_set(latent_assets, tmp_path):
    return shutil.copytree(latent_assets["set32"], tmp_path / "set")


def test_adm_center_crop_halves_then_resizes_then_crops():
    pixels = np.random.default_rng(0).integers(0, 256, (150, 100, 3), dtype=np.uint8)
    # by hand: 100 >= 2 * 32 -> BOX-halve to 50x75 (W x H); then BICUBIC to 32x48; crop rows 8..40
    step = Image.fromarray(pixels).resize((50, 75), Image.Resampling.BOX).resize((32, 48), Image.Resampling.BICUBIC)
    assert np.array_equal(adm_center_crop(pixels, 32, "x"), np.asarray(step)[8:40])
    assert adm_center_crop(pixels, 100, "x").shape == (100, 100, 3)


def test_stored_mean_and_std_equal_a_direct_vae_encode(latent_assets):
    data = LatentShardDataset(latent_assets["set32"], standardize="dataset")
    images = CroppedImages(open_images(latent_assets["src"]), 64, "uint8")
    vae = load_vae(latent_assets["vae2"])
    for index in (0, 77, 199):
        pixels, label = images[index]
        with torch.no_grad():
            posterior = vae.encode(pixels[None].to(torch.float32) / 255).latent_dist
        mean, std = data.posterior(index)
        assert torch.allclose(mean, posterior.mean[0], atol=1e-5) and torch.allclose(std, posterior.std[0], atol=1e-6)
        assert data.labels[index] == label == index // 20


def test_standardised_draws_have_mean_zero_and_std_half(latent_assets):
    data = LatentShardDataset(latent_assets["set32"], standardize="dataset")
    z = torch.stack([data.read(i, item_seed(0, i))[0] for i in range(len(data))])
    assert z.shape == (200, 4, 32, 32)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.01
    assert (z.std(dim=(0, 2, 3)) - 0.5).abs().max() < 0.01
    # EDM2's constants belong to the SD VAE, not to this one: its latents are far off
    edm2 = LatentShardDataset(latent_assets["set32"], standardize="edm2")
    assert edm2.latent_spec["raw_mean"] == list(EDM2_RAW_MEAN)
    assert (edm2.read(0, 1)[0].mean(dim=(1, 2)) - data.read(0, 1)[0].mean(dim=(1, 2))).abs().max() > 0.1


def test_each_draw_depends_on_seed_and_position_only(latent_assets):
    data = LatentShardDataset(latent_assets["set32"], standardize="dataset")
    assert torch.equal(data.read(5, 123)[0], data.read(5, 123)[0])
    assert not torch.equal(data.read(5, 123)[0], data.read(5, 124)[0])
    torch.manual_seed(0)
    first = TrainStream(data, 4, 10, seed=3).batch(0)
    torch.manual_seed(1)  # the global RNG plays no part
    assert all(torch.equal(a, b) for a, b in zip(first, TrainStream(data, 4, 10, seed=3).batch(0), strict=True))
    # two ranks read the positions 0, 2 and 1, 3 of the same global stream
    ranks = [TrainStream(data, 2, 10, seed=3, rank=r, world_size=2).batch(0)[0] for r in (0, 1)]
    assert torch.equal(torch.stack([ranks[0][0], ranks[1][0], ranks[0][1], ranks[1][1]]), first[0])
    # the same image read twice in a run (two epochs) gets two different latents
    stream = TrainStream(data, 4, 10, seed=3)
    index = stream.dataset_index(0)
    again = next(g for g in range(200, 400) if stream.dataset_index(g) == index)
    assert not torch.equal(stream.item(0)[0], stream.item(again)[0])


def test_manifest_describes_the_set(latent_assets):
    manifest = read_manifest(latent_assets["set32"])
    assert manifest["num_images"] == 200 and manifest["label_dim"] == 10 and manifest["latent_shape"] == [4, 32, 32]
    assert manifest["source"] == {"kind": "folder", "path": str(latent_assets["src"].resolve()), "labels_json": None}
    assert manifest["vae"]["folder"] == "vae2" and manifest["vae"]["weights_sha256"] == file_sha256(
        latent_assets["vae2"] / "diffusion_pytorch_model.safetensors"
    )
    assert manifest["preprocessing"]["crop"] == "adm-center" and manifest["dtype"] == "float32"
    assert [s["count"] for s in manifest["shards"]] == [64, 64, 64, 8]
    assert all(s["size"] == (latent_assets["set32"] / s["file"]).stat().st_size for s in manifest["shards"])
    assert all(s["sha256"] == file_sha256(latent_assets["set32"] / s["file"]) for s in manifest["shards"])
    data = build_dataset(
        {"name": "latents", "path": str(latent_assets["set32"]), "vae_path": str(latent_assets["vae2"])}
    )
    assert (len(data), data.img_channels, data.img_resolution, data.label_dim) == (200, 4, 32, 10)
    reference = build_reference_dataset({"name": "latents", "path": str(latent_assets["set32"])})
    image, label = reference[77]
    assert image.shape == (3, 64, 64) and label == 3 and image.min() >= -1 and image.max() <= 1


def test_float16_halves_the_storage(latent_assets, tmp_path):
    half = EncodeSettings(resolution=64, shard_size=100, batch_size=50, dtype="float16")
    encode_dataset(latent_assets["src"], tmp_path / "half", latent_assets["vae2"], half, progress=False)
    data16, data32 = LatentShardDataset(tmp_path / "half"), LatentShardDataset(latent_assets["set32"])
    assert data16.member_size - len(data16.header) == (data32.member_size - len(data32.header)) // 2
    assert torch.allclose(data16.posterior(3)[0], data32.posterior(3)[0], atol=2e-3)


def test_parts_split_the_shards_and_the_last_part_writes_the_manifest(latent_assets, tmp_path):
    out = tmp_path / "split"
    first = encode_dataset(
        latent_assets["src"], out, latent_assets["vae2"], SETTINGS, part=RankInfo(0, 2), progress=False
    )
    assert first["written"] == ["latents-000000.tar", "latents-000001.tar"] and first["manifest"] is None
    second = encode_dataset(
        latent_assets["src"], out, latent_assets["vae2"], SETTINGS, part=RankInfo(1, 2), progress=False
    )
    assert second["written"] == ["latents-000002.tar", "latents-000003.tar"] and second["manifest"]
    assert (out / "manifest.json").read_bytes() == (latent_assets["set32"] / "manifest.json").read_bytes()
    again = encode_dataset(latent_assets["src"], out, latent_assets["vae2"], SETTINGS, progress=False)
    assert again["written"] == [] and again["manifest"]  # complete shards are never rewritten
    with pytest.raises(
        SpecConflict, match=r"encode.json: this latent set was started with other inputs; changed: dtype"
    ):
        encode_dataset(
            latent_assets["src"],
            out,
            latent_assets["vae2"],
            EncodeSettings(resolution=64, shard_size=64, dtype="float16"),
            progress=False,
        )


# --- bad input: one clear error naming the file, before any training step ---


def test_wrong_vae_is_refused(latent_assets):
    with pytest.raises(
        ValueError,
        match=r"vae1: the latent set .*set32/manifest.json works in the latent space of VAE 'vae2' "
        r"\(folder 'vae2', config sha256 "
        r"[0-9a-f]{12}, .* but that folder holds VAE 'vae1'",
    ):
        build_dataset({"name": "latents", "path": str(latent_assets["set32"]), "vae_path": str(latent_assets["vae1"])})


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_shard_is_refused(latent_assets, tmp_path, verify):
    folder = copy_set(latent_assets, tmp_path)
    shard = folder / "latents-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"latents-000001.tar: (its SHA-256 differs|cannot read the shard|holds)"):
        LatentShardDataset(folder, verify=verify)


def test_changed_shards_are_hashed_and_untouched_ones_are_not_read(latent_assets, tmp_path, monkeypatch):
    folder = copy_set(latent_assets, tmp_path)  # copy2 keeps sizes and modification times
    shard = folder / "latents-000002.tar"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 1  # one bit, same size: the modification time changes
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"latents-000002.tar: its SHA-256 differs"):
        LatentShardDataset(folder)
    shutil.rmtree(folder / "parts")  # without the encoder's records every shard is hashed
    with pytest.raises(ValueError, match=r"latents-000002.tar: its SHA-256 differs"):
        LatentShardDataset(folder)
    import autoguide.io.records as records

    monkeypatch.setattr(records, "file_sha256", lambda path: pytest.fail(f"{path} was hashed"))
    assert len(LatentShardDataset(latent_assets["set32"])) == 200  # size and mtime as recorded: not read


def test_latents_of_another_shape_are_refused(latent_assets, tmp_path):
    folder = copy_set(latent_assets, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "latent_shape": [4, 16, 16]}))
    with pytest.raises(
        ValueError,
        match=r"latents-000000.tar: sample '000000000' is \d+ bytes, not a float32 array of shape \[8, 16, 16\]",
    ):
        LatentShardDataset(folder)


def test_mismatched_labels_are_refused(latent_assets, tmp_path):
    folder = copy_set(latent_assets, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "label_dim": 5}))
    with pytest.raises(ValueError, match=r"set/manifest.json: label 9 is out of range for label_dim 5"):
        LatentShardDataset(folder)
    pixels = np.zeros((6, 64, 64, 3), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", images=pixels, labels=np.arange(5))
    with pytest.raises(ValueError, match=r"bad.npz\['labels'\]: expected shape \(6,\)"):
        encode_dataset(tmp_path / "bad.npz", tmp_path / "out", latent_assets["vae2"], SETTINGS, progress=False)
    (tmp_path / "labels.json").write_text(json.dumps({"c0/00000.png": 0}))
    with pytest.raises(ValueError, match=r"labels.json: no label for image 'c0/00001.png'"):
        encode_dataset(
            latent_assets["src"],
            tmp_path / "out",
            latent_assets["vae2"],
            SETTINGS,
            labels_json=tmp_path / "labels.json",
            progress=False,
        )
    with pytest.raises(ValueError, match=r"num_classes=3, but .*digits has labels up to 9"):
        encode_dataset(
            latent_assets["src"],
            tmp_path / "out",
            latent_assets["vae2"],
            EncodeSettings(resolution=64, num_classes=3),
            progress=False,
        )


def test_convert_rgb_takes_grayscale_and_cmyk_as_edm2_does(latent_assets, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    gray = np.random.default_rng(1).integers(0, 256, (70, 64), dtype=np.uint8)
    Image.fromarray(gray).save(folder / "a.png")
    Image.new("CMYK", (64, 64), (10, 20, 30, 40)).save(folder / "b.jpg")
    settings = EncodeSettings(resolution=64, shard_size=64, batch_size=16, convert_rgb=True)
    encode_dataset(folder, tmp_path / "out", latent_assets["vae2"], settings, progress=False)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["preprocessing"]["convert_rgb"] is True and manifest["num_images"] == 2
    reference = build_reference_dataset({"name": "latents", "path": str(tmp_path / "out")})
    pixels = reference.read_uint8(0)[0]
    assert np.array_equal(pixels, adm_center_crop(np.repeat(gray[:, :, None], 3, axis=2), 64, "x"))
