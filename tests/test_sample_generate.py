"""The generation CLI end to end on tiny model files: outputs, records, rank splitting, 2D models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from autoguide.apps.config_tree import compose
from autoguide.apps.generate import run
from autoguide.data.shards import IndexedShardDataset
from autoguide.io import load_denoiser, save_model
from autoguide.nets import build_network
from autoguide.sample import Autoguidance, generate_images

TINY = {
    "arch": "unet",
    "img_resolution": 8,
    "img_channels": 3,
    "label_dim": 3,
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_resolutions": [4],
    "channels_per_head": 8,
}
FAST = ["sampler.num_steps=3", "progress=false", "batch_size=3"]


def save_tiny(path, config, seed):
    torch.manual_seed(seed)
    net = build_network(config)
    for p in net.parameters():
        if p.ndim == 0:
            p.data.fill_(0.8)
    save_model(path, net, {"network": config, "nimg": 1000 * seed, "ema_std": 0.1, "source": f"test seed {seed}"})
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "main": save_tiny(folder / "main.safetensors", TINY, 1),
        "guide": save_tiny(folder / "guide.safetensors", TINY, 2),
        "toy": save_tiny(
            folder / "toy.safetensors", {"arch": "mlp", "img_channels": 2, "label_dim": 2, "width": 16, "depth": 2}, 3
        ),
    }


def config(overrides):
    return compose("generate", overrides)


def test_outputs_records_and_agreement_with_the_python_api(files, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "out"
    cfg = config(
        [
            f"model={files['main']}",
            f"guide={files['guide']}",
            "guidance.weight=2.0",
            "seeds=0-4",
            "output.formats=[grid,png,npz,shards]",
            f"output.dir={out}",
            "output.grid_cols=2",
            *FAST,
        ]
    )
    run(cfg)
    with np.load(out / "samples.npz") as npz:
        assert npz["seeds"].tolist() == [0, 1, 2, 3, 4]
        labels, images = npz["labels"], npz["images"]
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8 and set(labels) <= {0, 1, 2}
    # same images as the Python API with the same seeds, labels and guidance
    net, guide = load_denoiser(files["main"]), load_denoiser(files["guide"])
    x = generate_images(net, range(5), labels.tolist(), [Autoguidance(guide=guide, weight=2.0)], num_steps=3)
    expected = np.round((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255)
    assert np.abs(images.astype(int) - expected).max() <= 1
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{s:06d}.png" for s in range(5)]
    assert np.array_equal(np.asarray(Image.open(out / "images" / "000003.png")), images[3])
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (3 * 8, 2 * 8, 3) and np.array_equal(grid[8:16, 8:16], images[3])
    shards = IndexedShardDataset(out / "shards")
    assert len(shards) == 5 and shards[2][1] == labels[2]
    recorded = (out / "generate.yaml").read_text()
    assert f"model: {files['guide']}" in recorded and "weight: 2.0" in recorded
    cards = json.loads((out / "model_cards.json").read_text())
    assert cards[files["main"]]["source"] == "test seed 1" and cards[files["guide"]]["nimg"] == 2000


def test_ranks_split_the_seeds_and_write_their_own_files(files, tmp_path, monkeypatch):
    common = [
        f"model={files['main']}",
        "guidance=cfg",
        "seeds=0-6",
        "class_labels=[2,0]",
        "output.formats=[npz,png]",
        *FAST,
    ]
    monkeypatch.delenv("RANK", raising=False)
    run(config([*common, f"output.dir={tmp_path / 'single'}"]))
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        run(config([*common, f"output.dir={tmp_path / 'multi'}"]))
    with np.load(tmp_path / "single" / "samples.npz") as single:
        parts = [np.load(tmp_path / "multi" / f"samples-rank{r:03d}.npz") for r in range(3)]
        assert [p["seeds"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5, 6]]
        assert (
            np.concatenate([p["labels"] for p in parts]).tolist() == [2, 0, 2, 0, 2, 0, 2] == single["labels"].tolist()
        )
        merged = np.concatenate([p["images"] for p in parts])
        assert np.abs(merged.astype(int) - single["images"].astype(int)).max() <= 1
    assert len(list((tmp_path / "multi" / "images").iterdir())) == 7
    assert (tmp_path / "multi" / "generate.yaml").is_file()


def test_toy_model_writes_a_scatter_plot(files, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "toy"
    run(
        config(
            [
                f"model={files['toy']}",
                "guidance=cfg",
                "seeds=0-99",
                "class_labels=all",
                "output.formats=[grid,npz]",
                f"output.dir={out}",
                *FAST,
            ]
        )
    )
    assert Image.open(out / "scatter.png").size[0] > 100
    with np.load(out / "samples.npz") as npz:
        assert npz["samples"].shape == (200, 2) and npz["labels"].tolist() == [0] * 100 + [1] * 100
    with pytest.raises(ValueError, match="png and shards need images"):
        run(config([f"model={files['toy']}", "seeds=0-1", "output.formats=[png]", f"output.dir={out}", *FAST]))


def test_config_errors_name_the_key(files, tmp_path):
    with pytest.raises(ValueError, match="class_labels=none"):
        run(config([f"model={files['main']}", "class_labels=none", f"output.dir={tmp_path}", *FAST]))
    with pytest.raises(ValueError, match=r"output.formats"):
        run(config([f"model={files['main']}", "seeds=0", "output.formats=[gif]", f"output.dir={tmp_path}", *FAST]))
    with pytest.raises(ValueError, match="needs a model file"):
        run(config([f"model={files['main']}", "guidance.weight=2.0", f"output.dir={tmp_path}", *FAST]))


def test_command_line_entry_point(files, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoguide.apps.generate",
            f"model={files['main']}",
            f"guide={files['guide']}",
            "guidance.weight=1.8",
            "guidance.interval=[0.1,10]",
            "seeds=0-1",
            f"output.dir={out}",
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "grid.png").is_file() and (out / "generate.yaml").is_file()
    assert "interval:\n  - 0.1\n  - 10" in (out / "generate.yaml").read_text()
