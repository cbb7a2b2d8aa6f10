"""``autoguide-encode SRC OUT_DIR --vae FOLDER [--resolution 512] ...``: images -> latent shards
of a VAE (``autoguide.data.encode``), EDM2's ImageNet-512 preprocessing (``PREPROCESSING``), then
the VAE's posterior mean and std per image.

    autoguide-encode imagenet/train data/img512-latents --vae vae/sd-vae-ft-mse --labels-json labels.json
    torchrun --nproc_per_node=8 -m autoguide.apps.encode imagenet/train data/img512-latents --vae vae/sd-vae-ft-mse
    sbatch --array=0-63 slurm/encode.sbatch imagenet/train data/img512-latents --vae vae/sd-vae-ft-mse

Every image's header is read first; images that cannot be encoded are listed all at once
before anything is written (``--skip-bad`` leaves them out, listed in the manifest).
Rerunning the same command continues a killed run at its first incomplete shard. Several
processes split the shards into contiguous ranges: ``--part I/K`` (a SLURM array task), else the
launcher's rank (torchrun, ``srun``). Prints a JSON summary (shards, images, images/s, manifest).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from autoguide.apps.cli import json_command
from autoguide.data.encode import EncodeSettings, encode_dataset
from autoguide.data.latents import DTYPES
from autoguide.io.records import SpecConflict
from autoguide.runtime.claim import FolderBusy
from autoguide.runtime.process import RankInfo, rank_from_env, resolve_device

PREPROCESSING = (
    "Preprocessing, as EDM2's dataset tool (ADM's center crop): while the short side is at least twice the "
    "resolution, halve the image with PIL's BOX filter; then resize it with BICUBIC so the short side equals the "
    "resolution (larger images shrink, smaller ones, like ImageNet's typical 500x375, are enlarged); then cut the "
    "central square. With --convert-rgb every image is first made RGB with PIL's convert('RGB') (grayscale, CMYK), "
    "as the tool does. The VAE sees uint8 / 255; the shards store its posterior mean and std."
)


def parse_part(text: str | None) -> RankInfo:
    """``"I/K"`` -> part I of K; ``None`` -> this process's rank (``runtime.rank_from_env``)."""
    if text is None:
        return rank_from_env()
    index, _, count = text.partition("/")
    try:
        part = RankInfo(int(index), int(count), 0)
    except ValueError:
        raise ValueError(f"--part {text!r}: expected I/K with integers, e.g. 3/16") from None
    if not 0 <= part.rank < part.world_size:
        raise ValueError(f"--part {text!r}: I must lie in [0, K)")
    return part


def run(args: argparse.Namespace) -> dict:
    """Encode as ``args`` say; returns the summary."""
    settings = EncodeSettings(
        resolution=args.resolution,
        shard_size=args.shard_size,
        batch_size=args.batch,
        dtype=args.dtype,
        num_classes=args.num_classes,
        vae_name=args.vae_name,
        workers=args.workers,
        convert_rgb=args.convert_rgb,
        skip_bad=args.skip_bad,
    )
    part = parse_part(args.part)
    device = resolve_device(args.device, part)
    summary = encode_dataset(
        args.src,
        args.out_dir,
        args.vae,
        settings,
        labels_json=args.labels_json,
        device=device,
        part=part,
        progress=not args.no_progress,
    )
    return {"part": f"{part.rank}/{part.world_size}", "device": str(device), **summary}


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``autoguide-encode``."""
    parser = argparse.ArgumentParser(
        prog="autoguide-encode",
        description="Encode images (folder, .npz or image shards) into latent shards of a VAE, with a manifest. "
        + PREPROCESSING
        + " Every image's header is read first: images that cannot be encoded are listed before "
        "anything is written.",
    )
    parser.add_argument(
        "src", help="image folder (any sizes; class subfolders or --labels-json), .npz, or image shards (.tar / folder)"
    )
    parser.add_argument("out_dir", help="folder of the latent set (shards, manifest.json)")
    parser.add_argument(
        "--vae",
        required=True,
        help="local diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)",
    )
    parser.add_argument(
        "--vae-name",
        default=None,
        help="the VAE's name in the manifest and model cards (default: the hub name its config.json records, "
        "else the folder's name)",
    )
    parser.add_argument("--resolution", type=int, default=512, help="center-crop size in pixels (default 512)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--batch", type=int, default=32, help="images per VAE batch (default 32)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float16", help="storage type of mean and std (default float16)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="label_dim of the set (default: the source's class count)"
    )
    parser.add_argument("--labels-json", default=None, help="labels of an image folder: JSON {relative path: class}")
    parser.add_argument(
        "--convert-rgb",
        action="store_true",
        help="make grayscale/CMYK/... images RGB instead of refusing them (EDM2's tool does)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be encoded (listed in the manifest) instead of stopping",
    )
    parser.add_argument("--device", default="auto", help="auto (this rank's GPU, else CPU), cpu, cuda:0, ...")
    parser.add_argument(
        "--workers", type=int, default=4, help="DataLoader workers reading and cropping images (default 4)"
    )
    parser.add_argument("--part", default=None, help="I/K: write shard range I of K (default: the launcher's rank)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    json_command(parser, argv, run, (ValueError, FileNotFoundError, SpecConflict, FolderBusy))


if __name__ == "__main__":
    main()
