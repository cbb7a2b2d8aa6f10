"""``python -m autoguide.data.convert`` end to end, through a subprocess."""

import subprocess
import sys

import numpy as np
from PIL import Image

from autoguide.data.images import float_to_uint8
from autoguide.data.shards import IndexedShardDataset


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "autoguide.apps.convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_npz_to_shards(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (7, 3, 4, 4), dtype=np.uint8)  # NCHW
    labels = np.array([2, 0, 1, 1, 0, 2, 2])
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    result = _run(tmp_path / "d.npz", tmp_path / "out", "--maxcount", 3, "--prefix", "syn")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        f"wrote {tmp_path / 'out' / f'syn-{i:06d}.tar'} ({c} samples)" for i, c in enumerate([3, 3, 1])
    ]
    assert "7 images" in lines[3] and "3 shards" in lines[3]
    data = IndexedShardDataset(tmp_path / "out")
    assert len(data) == 7 and data.label_dim == 3
    for i in range(7):
        x, label = data[i]
        assert label == labels[i] and np.array_equal(float_to_uint8(x), images[i].transpose(1, 2, 0))


def test_folder_to_shards_and_bad_source(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (4, 5, 5), dtype=np.uint8)
    for i, name in enumerate(["b", "a", "b", "a"]):
        (tmp_path / "src" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(tmp_path / "src" / name / f"{i}.png")
    result = _run(tmp_path / "src", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "data-000000.tar (4 samples)" in result.stdout
    data = IndexedShardDataset(tmp_path / "out")
    # Sorted relative paths: a/1, a/3, b/0, b/2; classes a = 0, b = 1.
    assert [data[i][1] for i in range(4)] == [0, 0, 1, 1]
    assert np.array_equal(float_to_uint8(data[2][0])[:, :, 0], pixels[0])
    bad = _run(tmp_path / "nothing.txt", tmp_path / "out2")
    assert bad.returncode == 2 and "nothing.txt" in bad.stderr and "image folder or an .npz" in bad.stderr
    assert not (tmp_path / "out2").exists()
