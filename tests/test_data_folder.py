"""Image folder and npz datasets: exact round trips, label sources, and error messages."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from autoguide.data.folder import ImageFolderDataset, NpzDataset
from autoguide.data.images import float_to_uint8, uint8_to_float


def _images(n, size=8, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _save_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def test_pixel_maps_are_exact_inverses():
    u = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    x = uint8_to_float(u)
    assert x.shape == (1, 16, 16) and x.min() == -1 and x.max() == 1
    torch.testing.assert_close(x[0, 0, 1], torch.tensor(1 / 127.5 - 1))
    assert np.array_equal(float_to_uint8(x), u)
    assert np.array_equal(float_to_uint8(torch.full((1, 2, 2), 3.0)), np.full((2, 2, 1), 255))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npz_round_trip(tmp_path, layout):
    images = _images(5)
    labels = np.array([0, 3, 1, 3, 2], dtype=np.int32)
    stored = images if layout == "NHWC" else images.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "d.npz", images=stored, labels=labels)
    data = NpzDataset(tmp_path / "d.npz")
    assert len(data) == 5 and data.label_dim == 4
    assert (data.img_channels, data.img_resolution) == (3, 8)
    for i in range(5):
        x, label = data[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
        assert np.array_equal(float_to_uint8(x), images[i]) and label == labels[i]


def test_npz_without_labels_and_explicit_layout(tmp_path):
    images = _images(2, size=3, channels=3)  # [2, 3, 3, 3] is ambiguous
    np.savez(tmp_path / "d.npz", images=images)
    with pytest.raises(ValueError, match=r"d\.npz\['images'\].*layout="):
        NpzDataset(tmp_path / "d.npz")
    data = NpzDataset(tmp_path / "d.npz", layout="NHWC")
    assert data.label_dim == 0 and data[1][1] == 0
    assert np.array_equal(float_to_uint8(data[1][0]), images[1])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((2, 8, 8, 3), np.float32)}, r"\['images'\].*uint8.*float32"),
        ({"images": np.zeros((2, 8, 8), np.uint8)}, r"\['images'\].*4 dimensions"),
        ({"images": np.zeros((2, 8, 8, 5), np.uint8)}, r"\['images'\].*no channel axis"),
        ({"pixels": np.zeros((2, 8, 8, 3), np.uint8)}, r"missing key 'images'.*pixels"),
        (
            {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.zeros(3, np.int64)},
            r"\['labels'\].*\(2,\)",
        ),
        (
            {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.zeros(2, np.float32)},
            r"\['labels'\].*integer",
        ),
        (
            {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([0, -1])},
            r"\['labels'\].*>= 0",
        ),
        ({"images": np.zeros((2, 8, 6, 3), np.uint8)}, r"8x6.*square"),
    ],
)
def test_npz_errors_name_the_key(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        NpzDataset(tmp_path / "bad.npz")


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.npz"):
        NpzDataset(tmp_path / "nope.npz")


def test_folder_classes_from_subfolders(tmp_path):
    images = _images(6, channels=1)
    names = ["zebra", "ant", "ant", "moth", "zebra", "ant"]
    for i, (pixels, name) in enumerate(zip(images, names, strict=True)):
        _save_png(tmp_path / name / f"img{i}.png", pixels)
    data = ImageFolderDataset(tmp_path)
    assert data.class_names == ["ant", "moth", "zebra"] and data.label_dim == 3
    assert (data.img_channels, data.img_resolution, len(data)) == (1, 8, 6)
    for i, name in enumerate(data.files):
        x, label = data[i]
        source = int(name.split("img")[1].split(".")[0])
        assert np.array_equal(float_to_uint8(x), images[source])
        assert label == ["ant", "moth", "zebra"].index(names[source])


def test_folder_labels_json_and_unlabeled(tmp_path):
    images = _images(3)
    for i in range(3):
        _save_png(tmp_path / "flat" / f"{i}.png", images[i])
    data = ImageFolderDataset(tmp_path / "flat")
    assert data.label_dim == 0 and [data[i][1] for i in range(3)] == [0, 0, 0]
    (tmp_path / "labels.json").write_text(json.dumps({"0.png": 4, "1.png": 0, "2.png": 2}))
    data = ImageFolderDataset(tmp_path / "flat", tmp_path / "labels.json")
    assert data.label_dim == 5 and [data[i][1] for i in range(3)] == [4, 0, 2]
    assert np.array_equal(float_to_uint8(data[2][0]), images[2])
    (tmp_path / "partial.json").write_text(json.dumps({"0.png": 1, "1.png": 0}))
    with pytest.raises(ValueError, match=r"partial\.json.*'2\.png'"):
        ImageFolderDataset(tmp_path / "flat", tmp_path / "partial.json")
    (tmp_path / "bad.json").write_text(json.dumps({"0.png": 1, "1.png": "cat", "2.png": 0}))
    with pytest.raises(ValueError, match=r"bad\.json.*'1\.png'.*'cat'"):
        ImageFolderDataset(tmp_path / "flat", tmp_path / "bad.json")


def test_folder_jpeg_loads(tmp_path):
    Image.fromarray(_images(1)[0]).save(tmp_path / "a.jpg", quality=95)
    x, _ = ImageFolderDataset(tmp_path)[0]
    assert x.shape == (3, 8, 8)


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*no"):
        ImageFolderDataset(tmp_path / "empty")
    _save_png(tmp_path / "mixed" / "a" / "0.png", _images(1)[0])
    _save_png(tmp_path / "mixed" / "a" / "1.png", _images(1, size=16)[0])
    with pytest.raises(ValueError, match=r"1\.png.*\(16, 16, 3\).*\(8, 8, 3\)"):
        ImageFolderDataset(tmp_path / "mixed")
    _save_png(tmp_path / "loose" / "a" / "0.png", _images(1)[0])
    _save_png(tmp_path / "loose" / "stray.png", _images(1)[0])
    with pytest.raises(ValueError, match=r"stray\.png.*subfolders"):
        ImageFolderDataset(tmp_path / "loose")
    (tmp_path / "rgba").mkdir()
    Image.new("RGBA", (4, 4)).save(tmp_path / "rgba" / "x.png")
    with pytest.raises(ValueError, match=r"x\.png.*'RGBA'"):
        ImageFolderDataset(tmp_path / "rgba")
