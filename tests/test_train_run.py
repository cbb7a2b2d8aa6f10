"""Few-step training runs through Hydra's compose API: MNIST-5k (UNet, wandb offline) and the
2D toy (MLP); the run folder's files; re-running the same config continues the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from autoguide.apps.config_tree import compose
from autoguide.core.typed_settings import ConfigError
from autoguide.io import read_card, read_model_file
from autoguide.train.checkpoint import list_checkpoints
from autoguide.train.run import train
from autoguide.train.run_config import read_train_config


def make_config(overrides: list[str]):
    return compose("train", overrides)


def tiny(run_dir: Path, batch: int, steps: int, checkpoint_steps: int) -> list[str]:
    kimg = checkpoint_steps * batch / 1000
    return [
        "debug=fast",
        f"run_dir={run_dir}",
        f"train.batch_size={batch}",
        f"train.duration_mi={steps * batch / 2**20}",
        f"train.checkpoint_kimg={kimg}",
        f"train.snapshot_kimg={kimg}",
        "train.sample_kimg=1000",
        "train.log_kimg=0.001",
        "callbacks.sample_grid.num_steps=2",
    ]


@pytest.mark.timeout(300)
def test_mnist_run_writes_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "mnist"
    cfg = make_config(
        [
            *tiny(run, batch=8, steps=3, checkpoint_steps=2),
            "net=mnist-xs",
            "logger=wandb",
            "callbacks.sample_grid.num_images=10",
            "callbacks.sample_grid.batch_size=10",
        ]
    )
    final = train(read_train_config(cfg))

    assert final == run / "final.safetensors"
    assert (run / "config.yaml").read_text() == OmegaConf.to_yaml(cfg, resolve=True)  # the composed config, whole
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
    train(read_train_config(make_config(base + tiny(run, batch=32, steps=4, checkpoint_steps=2))))
    assert [n for n, _ in list_checkpoints(run)] == [64, 128]
    assert read_card(run / "final.safetensors")["network"]["arch"] == "energy_mlp"
    plot = Image.open(run / "samples" / "nimg-000000000128.png")
    assert plot.size[0] > 200 and plot.size[1] > 200

    # the same run folder with a longer duration: resume=auto continues from nimg 128
    train(read_train_config(make_config(base + tiny(run, batch=32, steps=6, checkpoint_steps=2))))
    assert [n for n, _ in list_checkpoints(run)] == [128, 192]  # keep=2; 160 is not a multiple of 64
    assert read_card(run / "final.safetensors")["nimg"] == 192
    assert (run / "samples" / "nimg-000000000192.png").is_file()

    # resuming from an older checkpoint abandons the newer one: 192 is deleted at the next save
    older = run / "checkpoints" / "nimg-000000000128.ckpt"
    train(read_train_config(make_config(base + tiny(run, batch=32, steps=5, checkpoint_steps=2) + [f"resume={older}"])))
    assert [n for n, _ in list_checkpoints(run)] == [128, 160]
    assert read_card(run / "final.safetensors")["nimg"] == 160

    with pytest.raises(ConfigError, match=r"resume=never: run_dir .* already has checkpoints"):
        train(
            read_train_config(make_config(base + tiny(run, batch=32, steps=8, checkpoint_steps=2) + ["resume=never"]))
        )


@pytest.mark.timeout(300)
def test_toy2d_exact_target_run_learns_the_posterior_mean(tmp_path):
    """``train.target=exact`` (toy2d) trains against E[x0 | x, c]; after a short run the model's
    error to the exact class-A denoiser at sigma = 0.3 is well below an untrained network's."""
    import torch

    from autoguide.data.toy2d import toy_mixture
    from autoguide.io import load_denoiser

    run = tmp_path / "exact"
    base = [
        "experiment=toy2d-main",
        "logger=none",
        "net.width=32",
        "net.depth=2",
        "callbacks.sample_grid.num_images=16",
    ]
    config = [*tiny(run, batch=256, steps=150, checkpoint_steps=150), "train.target=exact", "train.lr_rampup_mi=0"]
    train(read_train_config(make_config(base + config)))
    trained = load_denoiser(run / "final.safetensors").eval()
    untrained = make_config(base + config)
    mixture = toy_mixture("A")
    x0 = mixture.sample(2000, torch.Generator().manual_seed(0))
    x = (x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)).float()
    sigma = torch.full((len(x),), 0.3)
    labels = torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 2).float()
    exact = mixture.denoise(x, sigma).float()

    def error(net):
        with torch.no_grad():
            return (net(x, sigma, labels) - exact).square().sum(1).mean().item()

    from autoguide.nets import build_network

    torch.manual_seed(0)
    fresh = build_network(OmegaConf.to_container(untrained.net, resolve=True)).eval()
    assert error(trained) < 0.5 * error(fresh)


@pytest.mark.timeout(300)
def test_multirun_points_train_in_their_own_folders(tmp_path):
    """``train.py -m ... seed=0,1``: each sweep point gets ``<run_dir>/<its overrides>``, so the
    two runs do not share (or resume from) one folder; an explicit ``run_dir`` is kept."""
    import subprocess
    import sys

    from autoguide.apps.train import sweep_point_folder

    repo = Path(__file__).resolve().parents[1]
    settings = [
        "experiment=toy2d-main",
        "logger=none",
        "net.width=8",
        "net.depth=1",
        "~callbacks.sample_grid",
        "train.batch_size=32",
        f"train.duration_mi={64 / 2**20}",
        "train.target=data",
    ]
    command = [sys.executable, str(repo / "train.py"), "-m", *settings, "seed=0,1", f"paths.runs_dir={tmp_path}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = sorted(p.parent.name for p in (tmp_path / "toy2d-main").glob("*/final.safetensors"))
    assert len(folders) == 2 and [f for f in folders if "seed=0" in f] and [f for f in folders if "seed=1" in f]
    assert all(f.startswith("experiment=toy2d-main,logger=none,") and "paths.runs_dir" not in f for f in folders)
    first, second = (read_model_file(tmp_path / "toy2d-main" / f / "final.safetensors")[0] for f in folders)
    assert any(not np.array_equal(first[k], second[k]) for k in first)  # different seeds, separate runs
    assert (
        sweep_point_folder(["paths.runs_dir=/x"]) == "default"
        and sweep_point_folder(["data.path=/a/b", "seed=2"]) == "data.path=_a_b,seed=2"
    )
    long = [f"+tag{i}=" + "x" * 40 for i in range(10)]
    name = sweep_point_folder(long)
    assert len(name.encode()) <= 200 and name.startswith("+tag0=") and name == sweep_point_folder(long[::-1])
    assert name != sweep_point_folder([*long[:-1], "+tag9=" + "y" * 40])


def test_progress_bar_ends_with_the_last_steps_values(capsys):
    """The bar's last line shows the last step's loss and learning rate (a log file is redrawn
    once a minute; the first step's rate is 0 with a ramp-up, as in EDM2)."""
    from types import SimpleNamespace

    from autoguide.train.progress import ImageProgressBar

    trainer = SimpleNamespace(is_global_zero=True, max_steps=3, progress_bar_metrics={}, loggers=[])
    module = SimpleNamespace(batch_size=1000, nimg=0)
    bar = ImageProgressBar()
    bar.on_train_start(trainer, module)
    for step, lr in enumerate([0.0, 0.005, 0.01]):
        module.nimg = (step + 1) * 1000
        trainer.progress_bar_metrics = {"train/loss": 1.0 / (step + 1), "train/lr": lr}
        bar.on_train_batch_end(trainer, module, None, None, step)
    bar.on_train_end(trainer, module)
    assert capsys.readouterr().err.rstrip().endswith("3.0/3.0 kimg [00:00<00:00, loss=0.3333, lr=0.01]")
