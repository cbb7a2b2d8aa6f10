"""Few-step training runs through Hydra's compose API: MNIST-5k (UNet, wandb offline) and the
2D toy (MLP); the run folder's files; re-running the same config continues the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from autoguide.config_dir import config_dir
from autoguide.io import read_card, read_model_file
from autoguide.train.checkpoint import list_checkpoints
from autoguide.train.plan import ConfigError
from autoguide.train.run import train


def make_config(overrides: list[str]):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def tiny(run_dir: Path, batch: int, steps: int, checkpoint_steps: int) -> list[str]:
    kimg = checkpoint_steps * batch / 1000
    return [
        "debug=fast", f"run_dir={run_dir}", f"train.batch_size={batch}",
        f"train.duration_mi={steps * batch / 2**20}", f"train.checkpoint_kimg={kimg}",
        f"train.snapshot_kimg={kimg}", "train.sample_kimg=1000", "train.log_kimg=0.001",
        "callbacks.sample_grid.num_steps=2",
    ]


@pytest.mark.timeout(300)
def test_mnist_run_writes_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "mnist"
    cfg = make_config(
        tiny(run, batch=8, steps=3, checkpoint_steps=2)
        + ["net=mnist-xs", "logger=wandb", "callbacks.sample_grid.num_images=10", "callbacks.sample_grid.batch_size=10"]
    )
    final = train(cfg)

    assert final == run / "final.safetensors"
    recorded = OmegaConf.load(run / "config.yaml")
    assert recorded.net.model_channels == 16 and recorded.train.batch_size == 8
    assert recorded.run_dir == str(run)  # resolved, not an interpolation
    assert [n for n, _ in list_checkpoints(run)] == [16, 24]  # every 2 steps and at the end
    state, card = read_model_file(final)
    assert card["nimg"] == 24 and card["ema_std"] is None
    assert card["network"] == OmegaConf.to_container(cfg.net, resolve=True)
    assert str(run) in card["source"]
    assert state.keys() == read_model_file(run / "phema" / "phema-000000000024-0.0500.safetensors")[0].keys()
    index = json.loads((run / "phema" / "index.json").read_text())
    assert index  # written by the EMA callback
    grid = Image.open(run / "samples" / "nimg-000000000024.png")
    assert grid.size == (10 * 32, 32)  # one column per class, seeds 0..9
    assert np.asarray(grid).std() > 0
    assert list(run.glob("logs/wandb/offline-run-*/files/media/images/samples_*.png")), "no sample image in wandb"


@pytest.mark.timeout(300)
def test_toy2d_run_scatter_and_rerun_continues(tmp_path):
    run = tmp_path / "toy"
    base = ["experiment=toy2d-main", "logger=none", "net.width=8", "net.depth=1", "callbacks.sample_grid.num_images=64"]
    train(make_config(base + tiny(run, batch=32, steps=4, checkpoint_steps=2)))
    assert [n for n, _ in list_checkpoints(run)] == [64, 128]
    assert read_card(run / "final.safetensors")["network"]["arch"] == "mlp"
    plot = Image.open(run / "samples" / "nimg-000000000128.png")
    assert plot.size[0] > 200 and plot.size[1] > 200

    # the same run folder with a longer duration: resume=auto continues from nimg 128
    train(make_config(base + tiny(run, batch=32, steps=6, checkpoint_steps=2)))
    assert [n for n, _ in list_checkpoints(run)] == [128, 192]  # keep=2; 160 is not a multiple of 64
    assert read_card(run / "final.safetensors")["nimg"] == 192
    assert (run / "samples" / "nimg-000000000192.png").is_file()

    # resuming from an older checkpoint abandons the newer one: 192 is deleted at the next save
    older = run / "checkpoints" / "nimg-000000000128.ckpt"
    train(make_config(base + tiny(run, batch=32, steps=5, checkpoint_steps=2) + [f"resume={older}"]))
    assert [n for n, _ in list_checkpoints(run)] == [128, 160]
    assert read_card(run / "final.safetensors")["nimg"] == 160

    with pytest.raises(ConfigError, match="resume=never: run_dir .* already has checkpoints"):
        train(make_config(base + tiny(run, batch=32, steps=8, checkpoint_steps=2) + ["resume=never"]))
