"""WebDataset shards: ``.tar`` files whose samples are ``<key>.png`` (a lossless uint8 image)
and, for labeled data, ``<key>.cls`` (the integer label as ASCII text).

- ``write_shards`` writes them, each shard atomically (temp name in the same folder, then
  ``os.replace``), with fixed member metadata so equal inputs give byte-identical files.
- ``ShardDataset`` streams them with the ``webdataset`` library (shards split across DDP
  ranks with ``wds.split_by_node``, then across loader workers with ``wds.split_by_worker``)
  for one epoch of a length every rank shares.
- ``IndexedShardDataset`` gives random access to the same files through a member index
  (byte offsets), for the resumable index stream of ``DiffusionDataModule``.

Items are ``(image, label)``: float32 CHW in [-1, 1] and an int (0 for unlabeled shards).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import Dataset, IterableDataset
from webdataset.shardlists import expand_urls
from webdataset.utils import pytorch_worker_info

from autoguide.data.images import (
    ImageHeader,
    check_square,
    check_uint8_hwc,
    decode_image,
    encode_png,
    read_header,
    uint8_to_float,
)

IMAGE_KEY = "png"
LABEL_KEY = "cls"


def shard_name(prefix: str, index: int) -> str:
    """File name of shard ``index``: ``{prefix}-{index:06d}.tar``."""
    return f"{prefix}-{index:06d}.tar"


def write_tar(path: Path, records: Iterable[dict[str, bytes | str]]) -> None:
    """Write WebDataset ``records`` (``{"__key__": key, extension: bytes, ...}``) to the tar
    ``path`` atomically (temp name in the same folder, fsync, ``os.replace``), with fixed member
    metadata (mtime 0, no user or group), so equal records give byte-identical files."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as stream:
            writer = wds.TarWriter(stream, encoder=False, mtime=0, user="", group="")
            for record in records:
                writer.write(record)
            writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def encode_label(label: int) -> bytes:
    """The ``cls`` member of a label: its decimal ASCII text."""
    return str(label).encode("ascii")


def _write_one_shard(path: Path, samples: list[tuple[str, np.ndarray, int | None]]) -> None:
    """Write ``samples`` (key, uint8 HWC, label or None) to ``path`` atomically."""
    records: list[dict[str, bytes | str]] = []
    for key, image, label in samples:
        records.append({"__key__": key, IMAGE_KEY: encode_png(image)})
        if label is not None:
            records[-1][LABEL_KEY] = encode_label(label)
    write_tar(path, records)


def write_shards(
    samples: Iterable[tuple[np.ndarray, int | None]],
    out_dir: str | Path,
    prefix: str = "data",
    maxcount: int = 10000,
) -> list[Path]:
    """Write ``(image uint8 [H, W] or [H, W, C], label int or None)`` pairs to shards of at most
    ``maxcount`` samples in ``out_dir``; sample keys are the running index ``%09d``.

    Labels must be given for all samples or for none. Returns the shard paths in order.
    """
    if maxcount <= 0:
        raise ValueError(f"maxcount must be positive, got {maxcount}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pending: list[tuple[str, np.ndarray, int | None]] = []
    labeled = None
    for index, (image, label) in enumerate(samples):
        image = check_uint8_hwc(np.asarray(image), f"sample {index}")
        if labeled is None:
            labeled = label is not None
        elif labeled != (label is not None):
            raise ValueError(
                f"sample {index}: label {label!r}, but sample 0 "
                f"{'had a label' if labeled else 'had none'}; label all samples or none"
            )
        if label is not None and (not isinstance(label, (int, np.integer)) or label < 0):
            raise ValueError(f"sample {index}: label must be an integer >= 0, got {label!r}")
        pending.append((f"{index:09d}", image, None if label is None else int(label)))
        if len(pending) == maxcount:
            paths.append(out_dir / shard_name(prefix, len(paths)))
            _write_one_shard(paths[-1], pending)
            pending = []
    if pending:
        paths.append(out_dir / shard_name(prefix, len(paths)))
        _write_one_shard(paths[-1], pending)
    return paths


@dataclass(frozen=True)
class ShardRecord:
    """One sample of a shard: where its data member's bytes lie (the PNG of an image shard)
    and its label (None if unlabeled)."""

    path: str
    key: str
    offset: int
    size: int
    label: int | None


def read_shard_index(path: str | Path, data_key: str = IMAGE_KEY) -> list[ShardRecord]:
    """The samples of one shard in file order (member headers are read, the data skipped).

    Members group into samples by key = the member path up to the first dot of its base name
    (the WebDataset rule); every sample needs a ``data_key`` member (``png`` for image shards),
    whose place the record gives.
    """
    path = str(path)
    grouped: dict[str, dict[str, tarfile.TarInfo]] = {}
    label_bytes: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                grouped.setdefault(key, {})[extension] = member
                if extension == LABEL_KEY:
                    label_file = archive.extractfile(member)
                    if label_file is None:
                        raise ValueError(f"{path}: member {member.name} is not a regular file")
                    label_bytes[key] = label_file.read()
    except (OSError, tarfile.TarError) as error:
        raise ValueError(f"{path}: cannot read the shard: {error}") from error
    records = []
    for key, members in grouped.items():
        if data_key not in members:
            raise ValueError(f"{path}: sample {key!r} has no '{data_key}' member")
        label = None
        if key in label_bytes:
            text = label_bytes[key].decode("ascii", errors="replace").strip()
            if not text.isdigit():
                raise ValueError(f"{path}: sample {key!r}: '{LABEL_KEY}' is {text!r}, not an integer >= 0")
            label = int(text)
        data = members[data_key]
        records.append(ShardRecord(path, key, data.offset_data, data.size, label))
    return records


def expand_shard_paths(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard files from a folder (its ``*.tar``, sorted), a path, a brace pattern such as
    ``out/data-{000000..000009}.tar``, or a list of paths. Local files only."""
    if isinstance(urls, Path) or (isinstance(urls, str) and Path(urls).is_dir()):
        folder = Path(urls)
        paths = sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else [str(folder)]
        if not paths:
            raise FileNotFoundError(f"{folder}: no .tar shards in this folder")
    elif isinstance(urls, str):
        paths = expand_urls(urls)
    else:
        paths = [str(p) for p in urls]
    if not paths:
        raise ValueError("no shard paths given")
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: shard file not found")
    return paths


class _ShardSet:
    """Index of a list of shards: records per shard, label_dim, and the shared image shape."""

    def __init__(self, urls: str | Path | Sequence[str | Path]) -> None:
        self.paths = expand_shard_paths(urls)
        self.shards = [read_shard_index(p) for p in self.paths]
        records = [r for shard in self.shards for r in shard]
        if not records:
            raise ValueError(f"{self.paths[0]}: the shards hold no samples")
        labeled = {r.label is not None for r in records}
        if len(labeled) > 1:
            raise ValueError(f"{self.paths[0]}...: some samples have a '{LABEL_KEY}' and some do not")
        self.label_dim = max(r.label for r in records if r.label is not None) + 1 if labeled == {True} else 0
        first = records[0]
        self.shape = decode_image(read_member(first), f"{first.path}:{first.key}").shape
        check_square(self.shape, f"{first.path}:{first.key}")
        self.records = records

    def decode(self, png: bytes, where: str) -> np.ndarray:
        """uint8 HWC pixels of ``png``; an error naming ``where`` if the shape differs."""
        pixels = decode_image(png, where)
        if pixels.shape != self.shape:
            raise ValueError(f"{where}: image shape {pixels.shape} differs from {self.shape}")
        return pixels


def read_member(record: ShardRecord) -> bytes:
    """The bytes of ``record``'s data member."""
    with open(record.path, "rb") as stream:
        stream.seek(record.offset)
        return stream.read(record.size)


class IndexedShardDataset(Dataset):
    """Random access to shard samples via their byte offsets (map-style, any order)."""

    def __init__(self, urls: str | Path | Sequence[str | Path]) -> None:
        self.shard_set = _ShardSet(urls)
        self.label_dim = self.shard_set.label_dim
        self.img_resolution, _, self.img_channels = self.shard_set.shape

    def __len__(self) -> int:
        return len(self.shard_set.records)

    def where(self, index: int) -> str:
        """Shard and key of item ``index`` (for error messages)."""
        record = self.shard_set.records[index]
        return f"{record.path}:{record.key}"

    def read_uint8(self, index: int) -> tuple[np.ndarray, int]:
        """The stored pixels (uint8 HWC) and the label of item ``index``."""
        record = self.shard_set.records[index]
        return self.shard_set.decode(read_member(record), self.where(index)), record.label or 0

    def header(self, index: int) -> ImageHeader:
        """The header of item ``index``'s image (``images.read_header``)."""
        return read_header(read_member(self.shard_set.records[index]), self.where(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, label = self.read_uint8(index)
        return uint8_to_float(pixels), label


class ShardDataset(IterableDataset):
    """Streams shards with ``webdataset``: shard list -> ``wds.split_by_node`` (shard i to rank
    i mod world_size) -> ``wds.split_by_worker`` (a rank's j-th shard to worker j mod
    num_workers) -> samples -> ``(image, label)``, in file order.

    Epoch length: every (rank, worker) pair yields exactly ``m`` samples (``with_epoch(m)``),
    ``m`` = the smallest sample count any pair is assigned, rounded down to a multiple of
    ``batch_size`` if given. So every rank yields ``num_workers * m`` samples, the same number
    of batches, and ranks read disjoint shards. Rank and worker come from
    ``webdataset.utils.pytorch_worker_info`` (torch.distributed, or RANK/WORLD_SIZE).
    """

    def __init__(self, urls: str | Path | Sequence[str | Path], batch_size: int | None = None) -> None:
        self.shard_set = _ShardSet(urls)
        self.batch_size = batch_size
        self.label_dim = self.shard_set.label_dim
        self.img_resolution, _, self.img_channels = self.shard_set.shape

    def epoch_length(self, world_size: int, num_workers: int) -> int:
        """Samples each (rank, worker) pair yields per epoch (``m`` above)."""
        sizes = [len(shard) for shard in self.shard_set.shards]
        counts = [
            sum(sizes[rank::world_size][worker::num_workers])
            for rank in range(world_size)
            for worker in range(num_workers)
        ]
        m = min(counts)
        if self.batch_size:
            m -= m % self.batch_size
        if m == 0:
            raise ValueError(
                f"{len(sizes)} shards ({sum(sizes)} samples) cannot give every one of "
                f"{world_size} ranks x {num_workers} workers a full batch of "
                f"{self.batch_size or 1}; write more, smaller shards (--maxcount)"
            )
        return m

    def _decode(self, sample: dict) -> tuple[torch.Tensor, int]:
        where = f"{sample['__url__']}:{sample['__key__']}"
        if IMAGE_KEY not in sample:
            raise ValueError(f"{where}: no '{IMAGE_KEY}' member")
        label = int(sample[LABEL_KEY].decode("ascii")) if LABEL_KEY in sample else 0
        return uint8_to_float(self.shard_set.decode(sample[IMAGE_KEY], where)), label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        _, world_size, _, num_workers = pytorch_worker_info()
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.shard_set.paths),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(),
            wds.map(self._decode),
        ).with_epoch(self.epoch_length(world_size, num_workers))
        return iter(pipeline)
