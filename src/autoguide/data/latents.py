"""Latent shards: the VAE posterior of every image, written by ``autoguide-encode``
(``autoguide.data.encode``) and read by the ``latents`` dataset.

Folder layout::

    <set>/manifest.json            what the set is (below); written once every shard is complete
    <set>/latents-000000.tar ...   WebDataset shards: <key>.npy (+ <key>.cls for labeled data)
    <set>/encode.json, parts/      the encoder's inputs and per-shard records (resuming, fingerprints)

Sample ``<key>.npy`` (key = the image's index in the source, ``%09d``; skipped images leave gaps) is one ``.npy`` array
``[2C, h, w]`` (float16 or float32): the posterior mean (channels ``0..C-1``) and std
(``C..2C-1``) of the VAE for that image, as EDM2 stores them (8 channels for the SD VAE).

``manifest.json`` (format ``autoguide-latents/1``): ``source`` (kind, path, labels JSON, image
count: what the latents were made from, so reference statistics can be computed from the
source images), ``vae`` (name, folder name, SHA-256 of ``config.json`` and of the weights:
``latent.vae_identity``), ``preprocessing`` (ADM center crop to ``resolution``; the VAE sees
``uint8 / 255``), ``dtype``, ``latent_shape`` ``[C, h, w]``, ``label_dim``, ``num_images``,
``shard_size``, ``skipped`` (source images left out: index, file, problem), ``shards`` (file,
first image, count, size, SHA-256 each) and ``stats`` (per-channel ``raw_mean``/``raw_std`` of the
latents ``mean + std * eps`` over the whole set, exact expectations from the stored arrays).

Reading (``LatentShardDataset``): random access by tar member offsets like the image shards.
Item ``index`` read at global stream position ``g`` of a run with data seed ``s`` is

    z_raw = mean + std * eps,   eps ~ N(0, I) from torch.Generator(item_seed(s, g))
    z     = z_raw * scale_c + bias_c                  (autoguide.data.vae.standardisation)

so every read draws a fresh latent that depends only on ``(s, g)`` (``data.stream.TrainStream``
passes the position; a resumed run reads the same latents). ``standardize``: ``edm2`` uses
EDM2's constants (``autoguide.data.vae``), ``dataset`` the manifest's ``stats``. Opening a set
checks, before any training step: the manifest, every shard's SHA-256 (``verify``; a shard
whose size and modification time still match the encoder's record in ``parts/`` is not read
again, the rule of ``io.records.unchanged``, so every rank of a large run can open the set
quickly), sample counts, labels, the shape and dtype of the arrays, and (with ``vae_path``)
that the run's VAE is the one the latents were made with (``latent.check_vae_path``); each error
names the file. ``standardize=edm2`` on a set whose raw std is far from EDM2's warns once.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from autoguide.data.shards import ShardRecord, read_member, read_shard_index
from autoguide.data.vae import (
    EDM2_FINAL_MEAN,
    EDM2_FINAL_STD,
    EDM2_RAW_MEAN,
    EDM2_RAW_STD,
    check_raw_std,
    check_vae_path,
    stability_vae_spec,
    standardisation,
)
from autoguide.io.records import load_json, read_json, unchanged

FORMAT = "autoguide-latents/1"
MANIFEST_NAME = "manifest.json"
PARTS_DIR = "parts"
LATENT_KEY = "npy"
PREFIX = "latents"
DTYPES = ("float16", "float32")
STANDARDIZE = ("edm2", "dataset")


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file of ``array`` (deterministic bytes)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest of a latent set given as its folder or as the manifest file itself."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the latent set at ``path`` (folder or ``manifest.json``); errors name
    the file (a missing manifest: the encoder has not finished)."""
    file = manifest_path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no latent-set manifest; encode the images with autoguide-encode (a set gets its "
            "manifest when every shard is written)"
        )
    manifest = load_json(file, "latent-set manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{file}: format {found!r}, expected {FORMAT!r} (a manifest written by autoguide-encode)")
    return manifest


def latent_statistics(manifest: Mapping[str, Any], standardize: str) -> tuple[list[float], list[float]]:
    """``(raw_mean, raw_std)`` per channel that standardise this set: EDM2's constants or the
    set's own measured ``stats``."""
    channels = manifest["latent_shape"][0]
    if standardize == "edm2":
        if channels != len(EDM2_RAW_MEAN):
            raise ValueError(
                f"standardize=edm2: EDM2's constants are for {len(EDM2_RAW_MEAN)} latent channels, "
                "but the latents have "
                f"{channels}; use standardize=dataset (the set's own statistics)"
            )
        return list(EDM2_RAW_MEAN), list(EDM2_RAW_STD)
    if standardize == "dataset":
        return list(manifest["stats"]["raw_mean"]), list(manifest["stats"]["raw_std"])
    raise ValueError(f"standardize={standardize!r}: expected one of {list(STANDARDIZE)}")


def latent_spec(manifest: Mapping[str, Any], standardize: str = "edm2") -> dict[str, Any]:
    """The model-card ``latent`` entry of models trained on this set standardised this way,
    with the identity of the set's VAE (``vae``: name and hashes)."""
    raw_mean, raw_std = latent_statistics(manifest, standardize)
    vae = manifest["vae"]
    return stability_vae_spec(vae["name"], raw_mean, raw_std, EDM2_FINAL_MEAN, EDM2_FINAL_STD, vae)


def shard_record_path(folder: Path, shard_file: str) -> Path:
    """The encoder's record of shard ``shard_file``: ``parts/<shard name>.json``."""
    return folder / PARTS_DIR / f"{Path(shard_file).stem}.json"


def shard_intact(folder: Path, entry: Mapping[str, Any]) -> bool:
    """Whether the shard of manifest ``entry`` holds the bytes the manifest hashed: its size and
    modification time match the encoder's record (then it is not read), else its SHA-256 does."""
    record = read_json(shard_record_path(folder, entry["file"]))
    recorded = record.get("shard") if isinstance(record, dict) else None
    if not isinstance(recorded, dict) or recorded.get("sha256") != entry["sha256"]:
        recorded = {"sha256": entry["sha256"], "size": entry["size"]}
    return unchanged(folder / entry["file"], recorded)


def _npy_header(dtype: str, shape: list[int]) -> bytes:
    """The header bytes every sample's ``.npy`` member starts with."""
    return npy_bytes(np.zeros(shape, dtype=dtype))[: -int(np.prod(shape)) * np.dtype(dtype).itemsize]


class LatentShardDataset(Dataset):
    """The latent set at ``path`` (folder or manifest); see the module docstring.

    ``stochastic`` is true: ``read(index, seed)`` draws the item's latent from ``seed`` (the
    training stream passes ``item_seed(data seed, stream position)``); ``dataset[index]``
    draws it from ``seed = index``. Items are ``(z float32 [C, h, w], label)``.
    """

    stochastic = True

    def __init__(
        self,
        path: str | os.PathLike,
        standardize: str = "edm2",
        vae_path: str | os.PathLike | None = None,
        verify: bool = True,
    ) -> None:
        self.manifest_file = manifest_path(path)
        self.folder = self.manifest_file.parent
        manifest = read_manifest(self.manifest_file)
        self.manifest = manifest
        self.latent_spec = latent_spec(manifest, standardize)
        if vae_path is not None:
            check_vae_path(self.latent_spec, vae_path, f"the latent set {self.manifest_file}")
        if standardize == "edm2":
            check_raw_std(manifest["stats"]["raw_std"], str(self.manifest_file))
        scale, bias = standardisation(
            self.latent_spec["raw_mean"], self.latent_spec["raw_std"], EDM2_FINAL_MEAN, EDM2_FINAL_STD
        )
        self.scale, self.bias = scale[:, None, None], bias[:, None, None]
        self.dtype = np.dtype(manifest["dtype"])
        self.img_channels, height, width = manifest["latent_shape"]
        if height != width:
            raise ValueError(f"{self.manifest_file}: latents are {height}x{width}; square latents are required")
        self.img_resolution = height
        self.label_dim = int(manifest["label_dim"])
        self.header = _npy_header(manifest["dtype"], [2 * self.img_channels, height, width])
        self.member_size = len(self.header) + 2 * self.img_channels * height * width * self.dtype.itemsize
        self._index_shards(manifest, verify)

    def _index_shards(self, manifest: Mapping[str, Any], verify: bool) -> None:
        """Offsets and labels of every sample, each shard checked against the manifest."""
        self.paths: list[str] = []
        shard_of, offsets, labels = [], [], []
        for number, entry in enumerate(manifest["shards"]):
            shard = self.folder / entry["file"]
            if not shard.is_file():
                raise FileNotFoundError(f"{shard}: shard listed in {self.manifest_file} is missing")
            if verify and not shard_intact(self.folder, entry):
                raise ValueError(
                    f"{shard}: its SHA-256 differs from {self.manifest_file} (the shard is truncated or was changed)"
                )
            records = read_shard_index(shard, LATENT_KEY)
            if len(records) != entry["count"]:
                raise ValueError(f"{shard}: holds {len(records)} samples, {self.manifest_file} says {entry['count']}")
            for record in records:
                self._check_record(record)
            with open(shard, "rb") as stream:
                stream.seek(records[0].offset)
                self._check_header(stream.read(len(self.header)), shard, records[0].key)
            self.paths.append(str(shard))
            shard_of += [number] * len(records)
            offsets += [r.offset for r in records]
            labels += [r.label for r in records]
        if len(offsets) != manifest["num_images"]:
            raise ValueError(
                f"{self.manifest_file}: the shards hold {len(offsets)} samples, "
                f"num_images says {manifest['num_images']}"
            )
        if self.label_dim and any(label is None for label in labels):
            raise ValueError(
                f"{self.manifest_file}: label_dim is {self.label_dim}, but some samples have no '.cls' label"
            )
        if not self.label_dim and any(label is not None for label in labels):
            raise ValueError(f"{self.manifest_file}: label_dim is 0, but the shards hold labels")
        self.labels = np.array([label or 0 for label in labels], dtype=np.int64)
        if self.label_dim and self.labels.max(initial=0) >= self.label_dim:
            raise ValueError(
                f"{self.manifest_file}: label {int(self.labels.max())} is out of range for label_dim {self.label_dim}"
            )
        self.shard_of = np.array(shard_of, dtype=np.int32)
        self.offsets = np.array(offsets, dtype=np.int64)

    def _check_record(self, record: ShardRecord) -> None:
        if record.size != self.member_size:
            raise ValueError(
                f"{record.path}: sample {record.key!r} is {record.size} bytes, not a {self.dtype.name} array of shape "
                f"{[2 * self.img_channels, self.img_resolution, self.img_resolution]} as {self.manifest_file} says"
            )

    def _check_header(self, header: bytes, path: Path | str, key: str) -> None:
        if header != self.header:
            raise ValueError(
                f"{path}: sample {key!r} is not a {self.dtype.name} array of shape "
                f"{[2 * self.img_channels, self.img_resolution, self.img_resolution]} as {self.manifest_file} says "
                f"(its header: {header[10:].decode('latin-1').strip()})"
            )

    def __len__(self) -> int:
        return len(self.offsets)

    def posterior(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored posterior ``(mean, std)`` of item ``index``, float32 ``[C, h, w]`` each."""
        path = self.paths[self.shard_of[index]]
        data = read_member(ShardRecord(path, "", int(self.offsets[index]), self.member_size, None))
        if not data.startswith(self.header):
            self._check_header(data[: len(self.header)], path, f"at byte {int(self.offsets[index])}")
        array = np.frombuffer(data, dtype=self.dtype, offset=len(self.header)).reshape(
            2 * self.img_channels, self.img_resolution, -1
        )
        values = torch.from_numpy(array.astype(np.float32))
        return values[: self.img_channels], values[self.img_channels :]

    def read(self, index: int, seed: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` with its latent drawn from ``seed``: ``(mean + std * eps) * scale + bias``."""
        mean, std = self.posterior(index)
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(int(seed)))
        return (mean + std * eps) * self.scale + self.bias, int(self.labels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.read(index, index)
