"""The training data of one run: ``DataSettings`` (the ``data`` config node), the dataset it
names (``training_dataset``) and ``DiffusionDataModule``, the LightningDataModule every
training run uses.

Config (one flat mapping, the Hydra ``data`` group)::

    name: mnist5k          # and that dataset's keys, see autoguide.data.registry
    num_workers: 2
    seed: 0                # seeds the index stream
    conditional: true      # one-hot labels of the dataset's classes; false -> label_dim 0

Two batch sizes, never mixed (docs/design.md, "Conventions"): the global ``batch_size``
(``train.batch_size``: images per optimizer step, all devices and accumulation rounds) and the
``micro_batch`` (images one device takes per forward pass, ``autoguide.train.plan``). The data
module knows only the micro-batch.

Training batches come from ``TrainStream`` (autoguide.data.stream): an infinite stream fixed by
``(seed, global image position)`` that starts at ``start_nimg``, so a resumed run continues
exactly. Batches are ``(images float32 [micro_batch, ...], labels float32 [micro_batch,
label_dim])``; when unconditional the labels are the empty tensor [micro_batch, 0] (pass
``None`` to the network).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from autoguide.data.registry import TrainingSet, build_dataset
from autoguide.data.stream import TrainStream

LOADER_KEYS = ("num_workers", "seed", "conditional")
"""Keys of the ``data`` node that say how the set is read; the others name the dataset."""


@dataclass(frozen=True)
class DataSettings:
    """The ``data`` config node split in two: ``dataset`` (``name`` and that dataset's keys, for
    ``autoguide.data.registry.build_dataset``) and how it is read: loader ``num_workers``, the
    index stream's ``seed``, ``conditional`` (one-hot labels; false: label_dim 0)."""

    dataset: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    seed: int = 0
    conditional: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DataSettings:
        """Split a flat ``data`` mapping; a ``batch_size`` key is refused (the micro-batch comes
        from ``train.batch_size`` and ``train.micro_batch``)."""
        data = dict(data)
        if "batch_size" in data:
            raise ValueError(
                "data.batch_size: the batch is set by train.batch_size (global) and train.micro_batch (per device)"
            )
        loader = {key: data.pop(key) for key in LOADER_KEYS if key in data}
        return cls(
            dataset=data,
            num_workers=int(loader.get("num_workers", 0)),
            seed=int(loader.get("seed", 0)),
            conditional=bool(loader.get("conditional", False)),
        )


def training_dataset(data: DataSettings) -> TrainingSet:
    """The dataset ``data.dataset`` names; ``ValueError`` when ``conditional`` asks for labels
    that it does not have."""
    dataset = build_dataset(data.dataset)
    if data.conditional and not dataset.label_dim:
        raise ValueError(f"data config asks for conditional: true, but dataset {data.dataset} has no labels")
    return dataset


def dataset_info(dataset: TrainingSet, data: DataSettings) -> dict[str, int]:
    """``img_channels``, ``img_resolution`` (0 for toy2d), ``label_dim`` (as fed to the network:
    0 unless ``data.conditional``) and ``num_images`` of ``dataset``."""
    return {
        "img_channels": dataset.img_channels,
        "img_resolution": dataset.img_resolution,
        "label_dim": dataset.label_dim if data.conditional else 0,
        "num_images": len(dataset),
    }


class DiffusionDataModule(L.LightningDataModule):
    """Training data for one run: ``micro_batch`` images per device and forward pass from the
    dataset of ``data`` (``dataset``: that dataset if it was already built, else it is built
    here).

    ``start_nimg`` (images already seen by all ranks together) is where the stream starts.
    Inside a Trainer it is read from the LightningModule's ``nimg`` attribute when the loader
    is built (after Lightning restored a checkpoint), so a resume needs no extra call;
    outside a Trainer set the attribute directly.
    """

    def __init__(
        self, data: DataSettings, micro_batch: int, start_nimg: int = 0, dataset: TrainingSet | None = None
    ) -> None:
        super().__init__()
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch!r}: expected a positive number of images per device")
        self.data = data
        self.micro_batch = micro_batch
        self.start_nimg = start_nimg
        self.dataset = training_dataset(data) if dataset is None else dataset

    @property
    def label_dim(self) -> int:
        """One-hot label width fed to the network: the dataset's class count, 0 if
        unconditional."""
        return dataset_info(self.dataset, self.data)["label_dim"]

    def _position(self) -> tuple[int, int, int]:
        """(rank, world_size, start_nimg) from the attached Trainer, else (0, 1, start_nimg)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, self.start_nimg
        start = int(getattr(trainer.lightning_module, "nimg", self.start_nimg))
        return trainer.global_rank, trainer.world_size, start

    def train_dataloader(self) -> DataLoader:
        rank, world_size, start_nimg = self._position()
        stream = TrainStream(
            self.dataset,
            self.micro_batch,
            self.label_dim,
            self.data.seed,
            rank=rank,
            world_size=world_size,
            start_nimg=start_nimg,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
