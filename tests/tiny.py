"""Small configurations several test files train or build: a tiny MNIST UNet, a tiny RGB UNet and the command-line
overrides of a few-step 2D toy run."""

from __future__ import annotations

from pathlib import Path

TINY_MNIST_UNET = {
    "arch": "unet",
    "img_resolution": 32,
    "img_channels": 1,
    "label_dim": 10,
    "model_channels": 8,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_resolutions": [],
    "channels_per_head": 8,
    "dropout": 0.0,
}
"""A 32x32 one-channel class-conditional UNet of two levels, eight channels wide."""


TINY_RGB_UNET = {
    "arch": "unet",
    "img_resolution": 8,
    "img_channels": 3,
    "label_dim": 4,
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_resolutions": [4],
    "channels_per_head": 8,
}
"""An 8x8 RGB UNet of two levels with attention at 4x4 and four classes."""


def toy_run(
    run_dir: Path,
    steps: int,
    every_steps: int,
    batch: int = 32,
    width: int = 8,
    depth: int = 1,
    checkpoint_every_steps: int | None = None,
) -> list[str]:
    """Overrides of a ``toy2d-main`` run of ``steps`` steps of ``batch`` images with an MLP of
    ``width`` x ``depth``, no logger, a snapshot every ``every_steps`` steps and a checkpoint every
    ``checkpoint_every_steps`` (default: ``every_steps``), no sample grid before the end."""
    return [
        "experiment=toy2d-main",
        "logger=none",
        f"run_dir={run_dir}",
        f"net.width={width}",
        f"net.depth={depth}",
        f"train.batch_size={batch}",
        f"train.duration_mi={steps * batch / 2**20}",
        f"train.checkpoint_kimg={(checkpoint_every_steps or every_steps) * batch / 1000}",
        f"train.snapshot_kimg={every_steps * batch / 1000}",
        "train.sample_kimg=1000",
        "callbacks.sample_grid.num_images=8",
        "callbacks.sample_grid.num_steps=2",
        "callbacks.progress_bar=null",
    ]
