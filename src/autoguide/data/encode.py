"""Images -> latent shards (``autoguide-encode``): EDM2's ImageNet-512 preprocessing, then the
VAE posterior of every image (``autoguide.data.latents`` describes the format).

Source: an image folder (any sizes; class subfolders or a labels JSON), an ``.npz`` archive or
image shards (``autoguide.data.convert.open_source``). Before anything is written every image's
header is read (``data.scan``): images that cannot be encoded (unreadable, truncated, not RGB
without ``convert_rgb``) are listed all at once and the run stops, or with ``skip_bad`` they are
left out and listed in the manifest (``skipped``). Every image is ADM center-cropped to
``resolution`` as EDM2's dataset tool does (``data.images.adm_center_crop``: smaller images are
enlarged), given to the VAE as ``uint8 / 255`` (the range EDM2's VAE statistics were measured
in) and stored as its posterior mean and std.

Work is cut into shards of ``shard_size`` images: shard ``k`` holds images ``[k S, (k + 1) S)``
and becomes ``latents-{k:06d}.tar`` plus the record ``parts/latents-{k:06d}.json`` (the
digest of the inputs, the shard's fingerprint, its per-channel sums), both written
atomically. A shard is complete iff its record matches the inputs and the shard is unchanged,
so a killed run continues at the first incomplete shard and never rewrites a complete one.
``encode.json`` binds the folder to its inputs (another VAE, source, resolution, dtype or shard
size is refused); it is written with the first shard, so a run refused before that leaves
nothing that blocks another try. A process with part ``(rank, world_size)`` (torchrun, ``srun``, a SLURM array
task) claims the folder for its part (``autoguide.runtime.claim``, role ``part-<rank>-of-<world_size>``:
two processes never encode the same part at once) and writes the contiguous shard range
``runtime.rank_slice(num_shards, part)``; whichever process finds every shard complete writes
``manifest.json``. Shards are bit-identical for equal inputs on the same machine and thread
count (floating point differs across hardware); the manifest records what was written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from autoguide.data.convert import SourceDataset, open_source, source_kind
from autoguide.data.images import adm_center_crop, uint8_to_float
from autoguide.data.latents import DTYPES, FORMAT, LATENT_KEY, MANIFEST_NAME, PREFIX, npy_bytes, shard_record_path
from autoguide.data.scan import BadImages, ImageProblem, scan_images
from autoguide.data.shards import LABEL_KEY, encode_label, shard_name, write_tar
from autoguide.data.vae import DiffusersVAE, downsampling, load_vae, vae_identity
from autoguide.io.atomic import write_json_atomic
from autoguide.io.records import bind_spec_file, fingerprint, read_json, spec_digest, unchanged
from autoguide.runtime.claim import claim_folder
from autoguide.runtime.process import RankInfo, rank_slice

SPEC_NAME = "encode.json"
ONE_PROCESS = RankInfo()
"""The whole shard range, for a single process."""
CROP = "adm-center"


@dataclass(frozen=True)
class EncodeSettings:
    """How to encode: crop ``resolution``, images per shard and per VAE batch, storage
    ``dtype``, the class count ``num_classes`` (None: the source's), the VAE's name for the
    record and messages (None: from its folder, ``latent.vae_identity``), DataLoader
    ``workers`` that read and crop the images, ``convert_rgb`` (grayscale, CMYK, ... images
    made RGB instead of refused), ``skip_bad`` (images that cannot be encoded are left out and
    listed in the manifest instead of stopping the run) and the ``scan_threads`` that read the
    headers first (None: Python's default)."""

    resolution: int = 512
    shard_size: int = 1000
    batch_size: int = 32
    dtype: str = "float16"
    num_classes: int | None = None
    vae_name: str | None = None
    workers: int = 0
    convert_rgb: bool = False
    skip_bad: bool = False
    scan_threads: int | None = None

    def __post_init__(self) -> None:
        for key in ("resolution", "shard_size", "batch_size"):
            value = getattr(self, key)
            if int(value) != value or value < 1:
                raise ValueError(f"{key}={value!r}: expected a positive integer")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {list(DTYPES)}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes!r}: expected a positive integer")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers!r}: expected an integer >= 0")


class CroppedImages(Dataset):
    """The images of ``source`` (a dataset with ``read_uint8`` and ``where``), ADM
    center-cropped to ``resolution``: items ``(uint8 CHW, label)`` with ``pixels="uint8"``
    (what the encoder feeds the VAE), ``(float32 CHW in [-1, 1], label)`` with ``"float"``
    (reference statistics). ``convert_rgb``: grayscale arrays get three equal channels (a
    folder source converts while decoding). ``skipped``: source indices left out (item ``i``
    is source image ``indices[i]``). Errors name the image's file."""

    def __init__(
        self,
        source: SourceDataset,
        resolution: int,
        pixels: str = "float",
        convert_rgb: bool = False,
        skipped: Sequence[int] = (),
    ) -> None:
        if pixels not in ("uint8", "float"):
            raise ValueError(f"pixels={pixels!r}: expected 'uint8' or 'float'")
        self.source = source
        self.resolution = resolution
        self.pixels = pixels
        self.convert_rgb = convert_rgb
        left_out = set(skipped)
        self.indices = [i for i in range(len(source)) if i not in left_out]
        self.label_dim = source.label_dim
        self.img_channels, self.img_resolution = 3, resolution

    def __len__(self) -> int:
        return len(self.indices)

    def read_uint8(self, index: int) -> tuple[np.ndarray, int]:
        """The cropped pixels (uint8 HWC) and the label of image ``index``."""
        source_index = self.indices[index]
        pixels, label = self.source.read_uint8(source_index)
        if self.convert_rgb and pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        return adm_center_crop(pixels, self.resolution, self.source.where(source_index)), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, label = self.read_uint8(index)
        if self.pixels == "float":
            return uint8_to_float(pixels), label
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), label


def open_images(
    path: str | os.PathLike, labels_json: str | os.PathLike | None = None, convert_rgb: bool = False
) -> SourceDataset:
    """The source images at ``path`` (folder of any sizes, ``.npz`` or image shards)."""
    labels = None if labels_json is None else Path(labels_json)
    return open_source(Path(path), labels, shards=True, same_size=False, convert_rgb=convert_rgb)


def source_images(manifest: Mapping[str, Any], pixels: str = "float") -> CroppedImages:
    """The preprocessed images a latent set was encoded from (its manifest's ``source`` and
    ``preprocessing``), e.g. for reference statistics in pixel space."""
    source, preprocessing = manifest["source"], manifest["preprocessing"]
    if not Path(source["path"]).exists():
        raise FileNotFoundError(f"{source['path']}: the source images of this latent set are gone (moved or deleted)")
    rgb, skipped = preprocessing["convert_rgb"], [s["index"] for s in manifest.get("skipped", [])]
    opened = open_images(source["path"], source["labels_json"], rgb)
    if len(opened) != manifest["num_images"] + len(skipped):
        raise ValueError(
            f"{source['path']}: holds {len(opened)} images now, the latent set was made from "
            f"{manifest['num_images'] + len(skipped)} ({len(skipped)} skipped)"
        )
    return CroppedImages(opened, preprocessing["resolution"], pixels, rgb, skipped)


class EncoderReads(Dataset):
    """The encoder's reads of ``images``: ``(uint8 CHW, label, "")``, or ``(zeros, -1, "<file>:
    <reason>")`` for an image that fails, so the error of a DataLoader worker reaches the user
    as its one line (``LatentEncoder.run`` raises it) instead of the worker's traceback."""

    def __init__(self, images: CroppedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            pixels, label = self.images[index]
        except (ValueError, OSError) as error:
            side = self.images.resolution
            return torch.zeros(3, side, side, dtype=torch.uint8), -1, str(error)
        return pixels, label, ""


@torch.no_grad()
def encode_pixels(vae: DiffusersVAE, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior ``(mean, std)`` (float32 ``[N, C, h, w]``) of uint8 images ``[N, 3, H, W]``,
    which the VAE sees as ``pixels / 255``."""
    posterior = vae.encode(pixels.to(torch.float32) / 255).latent_dist
    return posterior.mean, posterior.std


def shard_sums(stored: np.ndarray, channels: int) -> dict[str, Any]:
    """Per-channel sums over a shard's stored ``[N, 2C, h, w]`` arrays (float64): the mean,
    its square and the variance ``std^2``, and the element count per channel."""
    mean, std = stored[:, :channels].astype(np.float64), stored[:, channels:].astype(np.float64)
    return {
        "mean": mean.sum(axis=(0, 2, 3)).tolist(),
        "mean_sq": np.square(mean).sum(axis=(0, 2, 3)).tolist(),
        "var": np.square(std).sum(axis=(0, 2, 3)).tolist(),
        "elements": int(mean.shape[0] * mean.shape[2] * mean.shape[3]),
    }


def combined_stats(sums: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """``raw_mean``, ``raw_std`` per channel of ``z = mean + std * eps`` over all shards:
    ``E[z] = E[mean]``, ``E[z^2] = E[mean^2] + E[std^2]`` (exact expectations over eps)."""
    total = sum(s["elements"] for s in sums)
    first = np.sum([s["mean"] for s in sums], axis=0) / total
    second = (np.sum([s["mean_sq"] for s in sums], axis=0) + np.sum([s["var"] for s in sums], axis=0)) / total
    return {"raw_mean": first.tolist(), "raw_std": np.sqrt(np.maximum(second - first**2, 0)).tolist()}


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index``: images ``[first, first + count)``."""

    index: int
    first: int
    count: int

    @property
    def file(self) -> str:
        return shard_name(PREFIX, self.index)


def plan_shards(num_images: int, shard_size: int) -> list[ShardPlan]:
    """Every shard of the set, in order."""
    return [
        ShardPlan(k, first, min(shard_size, num_images - first))
        for k, first in enumerate(range(0, num_images, shard_size))
    ]


def shard_record(out_dir: Path, shard: ShardPlan, digest: str) -> dict[str, Any] | None:
    """The shard's record if it is complete for the inputs ``digest``, else ``None``."""
    record = read_json(shard_record_path(out_dir, shard.file))
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in {"spec": digest, **asdict(shard)}.items()):
        return None
    return record if unchanged(out_dir / shard.file, record.get("shard", {})) else None


class LatentEncoder:
    """Writes the shards of one latent set: ``plan`` (the inputs, bound to ``out_dir``), the VAE
    on ``device`` and the cropped source images."""

    def __init__(
        self,
        images: CroppedImages,
        vae: DiffusersVAE,
        plan: dict[str, Any],
        out_dir: Path,
        settings: EncodeSettings,
        device: torch.device,
    ) -> None:
        self.images, self.vae, self.plan, self.out_dir = images, vae, plan, out_dir
        self.settings, self.device = settings, device
        self.digest = spec_digest(plan)
        self.channels = plan["latent_shape"][0]
        self.shards = plan_shards(plan["num_images"], plan["shard_size"])

    def batches(self, shards: Sequence[ShardPlan]) -> list[list[int]]:
        """Image indices of every VAE batch of ``shards``, no batch spanning two shards."""
        size = self.settings.batch_size
        return [
            list(range(start, min(start + size, s.first + s.count)))
            for s in shards
            for start in range(s.first, s.first + s.count, size)
        ]

    def pin_spec(self, write: bool) -> None:
        """Bind the folder to the plan (``encode.json``): refuse another plan; ``write`` the
        file if it is missing (done with the first shard, so a refused run pins nothing)."""
        remedy = f"Use another output folder, or delete {self.out_dir} to encode again"
        bind_spec_file(self.out_dir / SPEC_NAME, self.plan, "this latent set", remedy, write=write)

    def write_shard(self, shard: ShardPlan, stored: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
        """Write the shard of the stored ``[N, 2C, h, w]`` arrays (keys: the images' indices in
        the source), then its record."""
        self.pin_spec(write=True)
        labeled = self.plan["label_dim"] > 0
        records: list[dict[str, bytes | str]] = []
        for offset, (array, label) in enumerate(zip(stored, labels, strict=True)):
            key = f"{self.images.indices[shard.first + offset]:09d}"
            records.append({"__key__": key, LATENT_KEY: npy_bytes(array)})
            if labeled:
                records[-1][LABEL_KEY] = encode_label(label)
        write_tar(self.out_dir / shard.file, records)
        record = {
            "spec": self.digest,
            **asdict(shard),
            "file": shard.file,
            "shard": fingerprint(self.out_dir / shard.file),
            "sums": shard_sums(stored, self.channels),
        }
        write_json_atomic(shard_record_path(self.out_dir, shard.file), record)
        return record

    def run(self, part: RankInfo, progress: bool = True) -> dict[str, Any]:
        """Write the missing shards of ``part``'s range; then the manifest if the set is complete.
        An image that fails to load stops the run with its one-line error."""
        self.pin_spec(write=False)
        mine = self.shards[rank_slice(len(self.shards), part)]
        todo = [s for s in mine if shard_record(self.out_dir, s, self.digest) is None]
        started = time.time()
        total = sum(s.count for s in todo)
        reads = EncoderReads(self.images)
        loader = DataLoader(reads, batch_sampler=self.batches(todo), num_workers=self.settings.workers)
        pending = iter(todo)
        shard, arrays, labels = next(pending, None), [], []
        with tqdm(
            total=total, unit="img", desc=f"encode {self.out_dir.name}", disable=not progress, smoothing=0.1
        ) as bar:
            for pixels, label, errors in loader:
                failed = [e for e in errors if e]
                if failed:
                    raise ValueError(failed[0])
                mean, std = encode_pixels(self.vae, pixels.to(self.device))
                arrays.append(torch.cat([mean, std], dim=1).cpu().numpy().astype(self.settings.dtype))
                labels += label.tolist()
                bar.update(len(pixels))
                assert shard is not None, "the loader's batches cover exactly the shards to write"
                if len(labels) == shard.count:
                    self.write_shard(shard, np.concatenate(arrays), labels)
                    shard, arrays, labels = next(pending, None), [], []
        seconds = time.time() - started
        manifest = self.write_manifest()
        return {
            "shards": len(self.shards),
            "mine": len(mine),
            "written": [s.file for s in todo],
            "images": total,
            "seconds": round(seconds, 2),
            "images_per_second": round(total / seconds, 2) if total and seconds > 0 else None,
            "manifest": None if manifest is None else str(self.out_dir / MANIFEST_NAME),
        }

    def write_manifest(self) -> dict[str, Any] | None:
        """``manifest.json`` once every shard is complete (``None`` while some are missing)."""
        found = [shard_record(self.out_dir, s, self.digest) for s in self.shards]
        records = [r for r in found if r is not None]
        if len(records) < len(found):
            return None
        manifest = {
            **self.plan,
            "shards": [
                {
                    "file": r["file"],
                    "first": r["first"],
                    "count": r["count"],
                    "size": r["shard"]["size"],
                    "sha256": r["shard"]["sha256"],
                }
                for r in records
            ],
            "stats": combined_stats([r["sums"] for r in records]),
        }
        if read_json(self.out_dir / MANIFEST_NAME) != manifest:
            write_json_atomic(self.out_dir / MANIFEST_NAME, manifest)
        return manifest


def encode_plan(
    images: CroppedImages,
    source: Mapping[str, Any],
    vae: DiffusersVAE,
    identity: Mapping[str, Any],
    settings: EncodeSettings,
    skipped: Sequence[ImageProblem] = (),
) -> dict[str, Any]:
    """The inputs that define a latent set (everything in the manifest but the shards and stats);
    ``skipped``: the source images left out, each with its problem."""
    factor = downsampling(vae)
    if settings.resolution % factor:
        raise ValueError(f"resolution={settings.resolution}: not a multiple of the VAE's downsampling factor {factor}")
    label_dim = images.label_dim
    if settings.num_classes is not None:
        if settings.num_classes < label_dim:
            raise ValueError(
                f"num_classes={settings.num_classes}, but {source['path']} has labels up to {label_dim - 1}"
            )
        label_dim = settings.num_classes
    side = settings.resolution // factor
    return {
        "format": FORMAT,
        "source": dict(source),
        "vae": dict(identity),
        "preprocessing": {
            "crop": CROP,
            "resolution": settings.resolution,
            "convert_rgb": settings.convert_rgb,
            "vae_input": "uint8 / 255",
        },
        "dtype": settings.dtype,
        "latent_shape": [int(vae.config.latent_channels), side, side],
        "label_dim": label_dim,
        "num_images": len(images),
        "shard_size": settings.shard_size,
        "skipped": [{"index": p.index, "image": p.where, "problem": p.problem} for p in skipped],
    }


def encode_dataset(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    vae_path: str | os.PathLike,
    settings: EncodeSettings = EncodeSettings(),
    labels_json: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    part: RankInfo = ONE_PROCESS,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode the images at ``src`` into the latent set ``out_dir`` with the VAE in local folder
    ``vae_path``; this process writes the shard range of ``part``. The images are scanned first
    (``data.scan``): problems stop the run with ``BadImages`` (listing them) before anything is
    written, or are skipped with ``settings.skip_bad``. Returns a summary: shards in the set and
    in this part, those written now, images, skipped images, seconds, images/s, the manifest
    path (``None`` while other parts are missing)."""
    src, out_dir = Path(src).resolve(), Path(out_dir)
    opened = open_images(src, labels_json, settings.convert_rgb)
    problems = scan_images(opened, settings.convert_rgb, settings.scan_threads)
    if problems and not settings.skip_bad:
        remedy = "nothing was written. Fix or remove them, or encode with --skip-bad to leave them out"
        if not settings.convert_rgb and any("--convert-rgb" in p.problem for p in problems):
            remedy += " (images that are not RGB: --convert-rgb)"
        raise BadImages(str(src), problems, len(opened), remedy)
    images = CroppedImages(opened, settings.resolution, "uint8", settings.convert_rgb, [p.index for p in problems])
    if not len(images):
        raise ValueError(f"{src}: no images to encode")
    source = {
        "kind": source_kind(src),
        "path": str(src),
        "labels_json": None if labels_json is None else str(Path(labels_json).resolve()),
    }
    identity = vae_identity(vae_path, settings.vae_name)
    vae = load_vae(vae_path, identity["name"]).to(device)
    plan = encode_plan(images, source, vae, identity, settings, problems)
    with claim_folder(out_dir, role=f"part-{part.rank}-of-{part.world_size}"):
        encoder = LatentEncoder(images, vae, plan, out_dir, settings, torch.device(device))
        summary = encoder.run(part, progress)
    return {"num_images": len(images), "skipped": len(problems), "latent_shape": plan["latent_shape"], **summary}
