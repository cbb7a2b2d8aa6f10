"""ImageNet as EDM2 prepares it: the ADM crop equals EDM2's dataset tool for every image size
(shrink and enlarge), bad images are listed all at once before anything is written, a worker's
error is one line, and an ImageNet-like folder encodes with the README's command unchanged."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from conftest import tiny_vae

from autoguide.data.encode import EncodeSettings, encode_dataset
from autoguide.data.images import adm_center_crop, read_header
from autoguide.data.latents import LatentShardDataset, read_manifest
from autoguide.data.registry import build_reference_dataset
from autoguide.data.scan import LISTED, BadImages

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
SETTINGS = EncodeSettings(resolution=32, shard_size=4, batch_size=4, dtype="float32")


def dataset_tool_crop(pixels: np.ndarray, r: int) -> np.ndarray:
    """EDM2's dataset tool (``center_crop_dhariwal``, from ADM), step by step: the sizes of every
    halving first, then the BICUBIC target, then the crop offsets."""
    width, height = pixels.shape[1], pixels.shape[0]
    halvings = []
    while min(width, height) >= 2 * r:
        width, height = width // 2, height // 2
        halvings.append((width, height))
    image = Image.fromarray(pixels)
    for size in halvings:
        image = image.resize(size, resample=Image.BOX)
    scale = r / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), resample=Image.BICUBIC)
    array = np.array(image)
    y, x = (array.shape[0] - r) // 2, (array.shape[1] - r) // 2
    return array[y : y + r, x : x + r]


@pytest.mark.parametrize(
    ("height", "width", "resolution"),
    [
        (375, 500, 512),
        (500, 375, 512),
        (333, 500, 512),  # ImageNet's typical sizes: enlarged
        (512, 512, 512),
        (512, 683, 512),  # at the crop
        (31, 47, 64),
        (47, 31, 64),
        (5, 9, 64),
        (64, 64, 64),
        (63, 64, 64),  # below, odd, tiny
        (65, 129, 64),
        (127, 128, 64),
        (128, 128, 64),
        (129, 301, 64),
        (301, 129, 64),  # above, up to 2x and at it
        (513, 1031, 64),
        (1031, 513, 64),
        (257, 255, 64),  # more than 2x: BOX halvings first
    ],
)
def test_crop_equals_the_dataset_tool_bit_for_bit(height, width, resolution):
    pixels = np.random.default_rng(height * 1000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    crop = adm_center_crop(pixels, resolution, "x")
    assert crop.shape == (resolution, resolution, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, dataset_tool_crop(pixels, resolution))


def make_folder(root: Path) -> dict[str, Path]:
    """Class folders of good RGB JPEGs and PNGs of several sizes, one CMYK JPEG, one truncated
    JPEG, one 1-channel PNG and one tiny image."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate([(40, 50), (50, 40), (33, 71)]):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg", quality=90)
    bad = {"cmyk": root / "a" / "cmyk.jpg", "truncated": root / "b" / "cut.jpg", "gray": root / "b" / "gray.png"}
    Image.new("CMYK", (48, 40), (10, 20, 30, 40)).save(bad["cmyk"])
    Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(bad["truncated"], quality=90)
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) * 2 // 3])
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8)).save(bad["gray"])
    Image.fromarray(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)).save(root / "a" / "tiny.png")
    return bad


def test_bad_images_are_listed_at_once_before_anything_is_written(tmp_path):
    vae = tmp_path / "vae"
    tiny_vae(2).save_pretrained(vae)
    src, out = tmp_path / "images", tmp_path / "out"
    bad = make_folder(src)
    with pytest.raises(BadImages) as refused:
        encode_dataset(src, out, vae, SETTINGS, progress=False)
    lines = str(refused.value).splitlines()
    assert (
        lines[0] == f"{src}: 3 of 10 images cannot be encoded; nothing was written. Fix or remove them, or encode with "
        "--skip-bad to leave them out (images that are not RGB: --convert-rgb):"
    )
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [str(bad[k]) for k in ("cmyk", "truncated", "gray")]
    assert "image mode 'CMYK' (JPEG), not RGB; encode with --convert-rgb" in lines[1]
    assert (
        "the image data is truncated or broken: image file is truncated" in lines[2]
        and "image mode 'L' (PNG)" in lines[3]
    )
    assert not out.exists()  # nothing written, nothing pinned: the fixed run below is accepted

    # --skip-bad leaves the truncated file out and lists it in the manifest
    skipping = encode_dataset(src, out, vae, replace(SETTINGS, convert_rgb=True, skip_bad=True), progress=False)
    manifest = read_manifest(out)
    assert skipping["skipped"] == 1 and manifest["num_images"] == 9
    assert manifest["skipped"] == [
        {"index": 8, "image": str(bad["truncated"]), "problem": refused.value.problems[1].problem}
    ]
    assert len(build_reference_dataset({"name": "latents", "path": str(out)})) == 9
    assert LatentShardDataset(out).shard_of.size == 9

    # the fixed source (the truncated file replaced) encodes every image, the tiny one enlarged
    Image.new("RGB", (60, 60), (1, 2, 3)).save(bad["truncated"])
    fixed = encode_dataset(src, tmp_path / "fixed", vae, replace(SETTINGS, convert_rgb=True), progress=False)
    assert fixed["num_images"] == 10 and fixed["skipped"] == 0 and read_manifest(tmp_path / "fixed")["skipped"] == []
    reference = build_reference_dataset({"name": "latents", "path": str(tmp_path / "fixed")})
    tiny = np.asarray(Image.open(src / "a" / "tiny.png"))
    assert np.array_equal(reference.read_uint8(4)[0], dataset_tool_crop(tiny, 32))  # a/tiny.png: after a/cmyk.jpg


def test_listing_shows_twenty_problems_then_a_count(tmp_path):
    for i in range(LISTED + 5):
        Image.new("L", (8, 8)).save(tmp_path / f"{i:02d}.png")
    with pytest.raises(BadImages, match=r"25 of 25 images") as refused:
        encode_dataset(tmp_path, tmp_path / "out", tmp_path / "no-vae-needed-yet", SETTINGS, progress=False)
    lines = str(refused.value).splitlines()
    assert len(lines) == 1 + LISTED + 1 and lines[-1] == "  ... and 5 more"


def test_the_header_scan_tells_truncated_files_from_trailing_bytes(tmp_path):
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "trailing.jpg").write_bytes(data + b"\0\0junk")
    assert read_header(str(tmp_path / "trailing.jpg"), "x").mode == "RGB"  # decodes in full: fine
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.jpg: the image data is truncated or broken: "):
        read_header(str(tmp_path / "cut.jpg"), str(tmp_path / "cut.jpg"))
    with pytest.raises(ValueError, match=r"not.png: cannot read the image: cannot identify image file"):
        read_header(b"hello", "not.png")


def test_a_worker_error_reaches_the_user_as_one_line(tmp_path):
    """A PNG whose header and end are intact but whose pixel data is broken passes the scan and
    fails in a DataLoader worker: the command prints the file and the reason, no traceback."""
    vae = tmp_path / "vae"
    tiny_vae(2).save_pretrained(vae)
    src = tmp_path / "images"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 40 * i, dtype=np.uint8)).save(src / f"{i}.png")
    broken = bytearray((src / "1.png").read_bytes())
    start = broken.index(b"IDAT") + 8
    broken[start : start + 8] = b"\xff" * 8
    (src / "1.png").write_bytes(bytes(broken))
    command = [
        sys.executable,
        "-m",
        "autoguide.apps.encode",
        str(src),
        str(tmp_path / "out"),
        "--vae",
        str(vae),
        "--resolution",
        "32",
        "--workers",
        "2",
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"autoguide-encode: error: {src / '1.png'}: ")
    assert "Traceback" not in result.stderr


def readme_encode_command() -> list[str]:
    """The README's ImageNet encode command (the first ``autoguide-encode imagenet/train`` line)."""
    line = next(
        x for x in (REPO / "README.md").read_text().splitlines() if x.startswith("autoguide-encode imagenet/train")
    )
    return shlex.split(line.split("#")[0])


@pytest.mark.timeout(600)
def test_an_imagenet_like_folder_encodes_with_the_readme_command(tmp_path):
    """Class folders of JPEGs of ImageNet's typical sizes (500x375, 375x500, 500x333, ...), a
    grayscale and a CMYK one among them; the README's command, only the paths moved into
    ``tmp_path``, with a 4-block random VAE (512 -> 64x64x4, as the SD VAE)."""
    rng = np.random.default_rng(1)
    train = tmp_path / "imagenet" / "train"
    sizes = {"n01440764": [(375, 500), (500, 375)], "n01443537": [(333, 500), (500, 500)], "n01484850": [(281, 500)]}
    for wnid, shapes in sizes.items():
        (train / wnid).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                train / wnid / f"{wnid}_{i}.JPEG", quality=85
            )
    Image.fromarray(rng.integers(0, 256, (375, 500), dtype=np.uint8)).save(train / "n01484850" / "n01484850_gray.JPEG")
    Image.new("CMYK", (500, 400), (5, 50, 100, 0)).save(train / "n01484850" / "n01484850_cmyk.JPEG")
    tiny_vae(4, width=4).save_pretrained(tmp_path / "vae" / "sd-vae-ft-mse")
    command = readme_encode_command()
    assert command[:2] == ["autoguide-encode", "imagenet/train"] and "--resolution" not in command
    result = subprocess.run(
        [sys.executable, "-m", "autoguide.apps.encode", *command[1:], "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    manifest = read_manifest(tmp_path / "data" / "img512-latents")
    assert summary["num_images"] == manifest["num_images"] == 7 and manifest["skipped"] == []
    assert manifest["latent_shape"] == [4, 64, 64] and manifest["label_dim"] == 3
    assert manifest["preprocessing"] == {
        "crop": "adm-center",
        "resolution": 512,
        "convert_rgb": True,
        "vae_input": "uint8 / 255",
    }
    assert manifest["vae"]["name"] == "sd-vae-ft-mse"  # named after its folder (save_pretrained records no hub name)
