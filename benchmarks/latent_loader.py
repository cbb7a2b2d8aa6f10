"""Is the latent loader fast enough? Latent samples per second of the training loader (1 and 4
workers) next to the training rate of ``img512-xs`` at batch 32 on the same machine, as a ratio.

    python benchmarks/latent_loader.py [--images 512] [--batches 60] [--train-steps 1] [--warmup 0]
    python benchmarks/latent_loader.py --set data/img512-latents      # an existing latent set

The set: ``--images`` random 64x64 RGB images encoded by ``autoguide.data.encode`` with a
one-block random ``AutoencoderKL`` (64x64x4 latents, float16 mean and std: the ImageNet-512
layout, 64 KiB per image), 1000 classes. The loader is the training one (``TrainStream`` in a
``DataLoader``, batch 32, every item read by tar offset and drawn as ``mean + std * eps``,
standardised). The training rate is one Adam step of EDM2-XS (125 M parameters, 64x64x4, 1000
classes) at global batch 32 (``--micro-batch`` images per forward/backward, accumulated), fp32
on the CPU, as ``DiffusionModule`` takes it. Also printed: the encoder's images/s on this set
and the encode rate of the SD VAE's architecture (random weights, nothing downloaded) on
512x512 images (``--sd-images``, 0 to skip).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from autoguide.apps.config_tree import get_preset
from autoguide.data.encode import EncodeSettings, encode_dataset, encode_pixels
from autoguide.data.latents import LatentShardDataset
from autoguide.data.stream import TrainStream
from autoguide.diffusion import edm2_loss
from autoguide.nets import build_network
from autoguide.train.recipe import EDM2_ADAM_KWARGS

BATCH = 32


def vae(blocks: int, widths: list[int], layers: int, norm_groups: int, attention: bool = True):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=widths,
        layers_per_block=layers,
        latent_channels=4,
        norm_num_groups=norm_groups,
        sample_size=512,
        mid_block_add_attention=attention,
    ).eval()


def build_set(folder: Path, images: int) -> tuple[Path, float]:
    """A latent set of ``images`` random images with the ImageNet-512 latent layout; encode images/s."""
    pixels = np.random.default_rng(0).integers(0, 256, (images, 64, 64, 3), dtype=np.uint8)
    np.savez(folder / "images.npz", images=pixels, labels=np.arange(images) % 1000)
    vae(1, [32], 1, 8, attention=False).save_pretrained(folder / "vae")
    settings = EncodeSettings(resolution=64, shard_size=128, batch_size=64, dtype="float16", num_classes=1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is fastest, more only wait on a shared machine
    try:
        summary = encode_dataset(folder / "images.npz", folder / "latents", folder / "vae", settings, progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder / "latents", summary["images_per_second"]


def loader_rate(dataset: LatentShardDataset, workers: int, batches: int) -> float:
    """Latent samples per second through the training loader with ``workers`` processes."""
    stream = TrainStream(dataset, BATCH, dataset.label_dim, seed=0)
    loader = iter(
        DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
        )
    )
    for _ in range(max(2 * workers, 2)):  # start-up and the prefetched first batches
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * BATCH / (time.perf_counter() - start)


def train_rate(steps: int, warmup: int, micro: int) -> float:
    """Images per second of EDM2-XS Adam steps at global batch 32 on the CPU."""
    torch.manual_seed(0)
    net = build_network(get_preset("img512-xs")).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, **EDM2_ADAM_KWARGS)
    latents = torch.randn(BATCH, 4, 64, 64) * 0.5
    labels = torch.nn.functional.one_hot(torch.arange(BATCH) % 1000, 1000).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for part in range(0, BATCH, micro):
            (
                edm2_loss(net, latents[part : part + micro], labels[part : part + micro], -0.4, 1.0) * micro / BATCH
            ).backward()
        for p in net.parameters():
            torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0, out=p.grad)
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def sd_vae_rate(images: int) -> float:
    """Images/s of the SD VAE's encoder architecture (random weights) on 512x512 images."""
    model = vae(4, [128, 256, 512, 512], 2, 32)
    pixels = torch.randint(0, 256, (images, 3, 512, 512), dtype=torch.uint8)
    encode_pixels(model, pixels[:1])
    start = time.perf_counter()
    for image in pixels.split(1):
        encode_pixels(model, image)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=None, help="an existing latent set (default: build one)")
    parser.add_argument(
        "--images", type=int, default=512, help="images of the built set (the loader cycles through it)"
    )
    parser.add_argument("--batches", type=int, default=60, help="timed loader batches of 32")
    parser.add_argument(
        "--train-steps", type=int, default=1, help="timed Adam steps of img512-xs at batch 32 (0: loader only)"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed steps first (a CPU step of batch 32 takes minutes)"
    )
    parser.add_argument("--micro-batch", type=int, default=8, help="images per forward/backward (accumulated to 32)")
    parser.add_argument("--sd-images", type=int, default=4, help="512x512 images for the SD-VAE encode rate (0: skip)")
    args = parser.parse_args()
    warnings.filterwarnings(
        "ignore", message=".*suggested max number of worker.*"
    )  # 4 workers on fewer cores: measured anyway

    with tempfile.TemporaryDirectory() as tmp:
        encode_rate = None
        path = args.set
        if path is None:
            path, encode_rate = build_set(Path(tmp), args.images)
        dataset = LatentShardDataset(path)
        shape = [2 * dataset.img_channels, dataset.img_resolution, dataset.img_resolution]
        print(
            f"latent set {path}: {len(dataset)} images, stored {dataset.dtype.name} {shape}; {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.2f}"
        )
        if encode_rate:
            print(f"encode (tiny VAE, 64x64 images -> 64x64x4, 1 thread): {encode_rate:.0f} images/s")
        if args.sd_images:
            print(
                f"encode (SD-VAE architecture, 512x512 -> 64x64x4, CPU, {torch.get_num_threads()} threads): "
                f"{sd_vae_rate(args.sd_images):.2f} images/s"
            )
        rates = {w: loader_rate(dataset, w, args.batches) for w in (1, 4)}
    for workers, rate in rates.items():
        print(f"loader, {workers} worker(s): {rate:.0f} latent samples/s")
    if args.train_steps == 0:
        return
    train = train_rate(args.train_steps, args.warmup, args.micro_batch)
    print(
        f"training img512-xs, batch {BATCH}, fp32 CPU ({torch.get_num_threads()} threads): {train:.3f} images/s "
        f"({BATCH / train:.1f} s/step)"
    )
    for workers, rate in rates.items():
        print(f"ratio loader ({workers} worker(s)) / training: {rate / train:.0f}")


if __name__ == "__main__":
    main()
