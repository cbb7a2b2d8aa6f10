"""Shared test settings."""

import importlib
import os
import signal
import subprocess
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' networks are tiny: one thread is fastest, and the 2-core machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REQUIRE_SLURM = os.environ.get("AUTOGUIDE_REQUIRE_SLURM") == "1"
"""Set in CI (``.ci/run``): a SLURM cluster or plugin that is missing fails the slurm tests
instead of skipping them."""


def skip_unless_slurm(reason: str) -> None:
    """Skip a SLURM test for ``reason``, or fail it when SLURM is required."""
    if REQUIRE_SLURM:
        pytest.fail(f"AUTOGUIDE_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def import_slurm_plugin(name: str) -> ModuleType:
    """``importlib.import_module(name)``, or ``skip_unless_slurm`` if it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_unless_slurm(f"{name} is not installed (pip install -e '.[slurm]')")


# --- Latent data: a tiny random SD-VAE stand-in and MNIST digits as 3-channel 64x64 images ---

DIGITS_PER_CLASS = 20  # 200 digits


def tiny_vae(blocks: int, width: int = 8, seed: int = 0):
    """A small randomly initialised diffusers AutoencoderKL with 4 latent channels; ``blocks``
    down blocks give a downsampling factor of ``2 ** (blocks - 1)`` (nothing is downloaded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=[width * 2**i for i in range(blocks)],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()


def mnist_rgb64(folder, per_class: int = DIGITS_PER_CLASS):
    """MNIST-5k digits (``per_class`` of each class) as 64x64 RGB PNGs in class subfolders c0..c9."""
    import numpy as np
    from PIL import Image

    from autoguide.data.mnist import load_mnist5k

    images, labels = load_mnist5k()
    for label in range(10):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == label)[:per_class]:
            digit = Image.fromarray(images[i]).resize((64, 64), Image.Resampling.BICUBIC).convert("RGB")
            digit.save(folder / f"c{label}" / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="session")
def latent_assets(tmp_path_factory):
    """Source digits, two VAE folders (``vae2``: 64x64 images -> 32x32x4, ``vae1``: -> 64x64x4)
    and the latent set ``set32`` (float32, shards of 64, the tiny VAE's own statistics)."""
    pytest.importorskip("diffusers")
    from autoguide.data.encode import EncodeSettings, encode_dataset

    root = tmp_path_factory.mktemp("latent")
    assets = {
        "src": mnist_rgb64(root / "digits"),
        "vae2": root / "vae2",
        "vae1": root / "vae1",
        "set32": root / "set32",
    }
    tiny_vae(2).save_pretrained(assets["vae2"])
    tiny_vae(1).save_pretrained(assets["vae1"])
    settings = EncodeSettings(resolution=64, shard_size=64, batch_size=16, dtype="float32")
    encode_dataset(assets["src"], assets["set32"], assets["vae2"], settings, progress=False)
    return assets


def kill_at_first_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 600) -> list:
    """SIGKILL the training ``proc`` as soon as ``run_dir`` holds a checkpoint (at most
    ``timeout`` s); returns the checkpoints it left."""
    from autoguide.train.checkpoint import list_checkpoints

    deadline = time.monotonic() + timeout
    while not list_checkpoints(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return list_checkpoints(run_dir)
