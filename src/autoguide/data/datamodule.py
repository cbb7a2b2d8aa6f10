"""``DiffusionDataModule``: the LightningDataModule every training run uses.

Config (one flat mapping, e.g. a Hydra ``data`` group)::

    name: mnist5k          # and that dataset's keys, see autoguide.data.registry
    batch_size: 256        # per device
    num_workers: 2
    seed: 0                # seeds the index stream
    conditional: true      # one-hot labels of the dataset's classes; false -> label_dim 0

Training batches come from ``TrainStream`` (autoguide.data.stream): an infinite stream fixed by
``(seed, global image position)`` that starts at ``start_nimg``, so a resumed run continues
exactly. Batches are ``(images float32 [B, ...], labels float32 [B, label_dim])``; when
unconditional the labels are the empty tensor [B, 0] (pass ``None`` to the network).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from autoguide.data.registry import build_dataset
from autoguide.data.stream import TrainStream


class DiffusionDataModule(L.LightningDataModule):
    """Training data for one run; see the module docstring for the config keys.

    ``start_nimg`` (images already seen by all ranks together) is where the stream starts.
    Inside a Trainer it is read from the LightningModule's ``nimg`` attribute when the loader
    is built (after Lightning restored a checkpoint), so a resume needs no extra call;
    outside a Trainer set the attribute directly. ``dataset``: the dataset of ``cfg`` if it
    was already built.
    """

    def __init__(self, cfg: Mapping, start_nimg: int = 0, dataset: Dataset | None = None) -> None:
        super().__init__()
        cfg = dict(cfg)
        if cfg.get("batch_size") is None:
            raise ValueError(f"data config needs 'batch_size' (images per device); got {cfg}")
        self.batch_size = int(cfg.pop("batch_size"))
        self.num_workers = int(cfg.pop("num_workers", 0))
        self.seed = int(cfg.pop("seed", 0))
        self.conditional = bool(cfg.pop("conditional", False))
        self.dataset_cfg = cfg
        self.start_nimg = start_nimg
        if dataset is not None:  # already built from this config (e.g. when the run was checked)
            self.__dict__["dataset"] = dataset

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The dataset, built on first use."""
        dataset = build_dataset(self.dataset_cfg)
        if self.conditional and not dataset.label_dim:
            raise ValueError(f"data config asks for conditional: true, but dataset {self.dataset_cfg} has no labels")
        return dataset

    @property
    def label_dim(self) -> int:
        """One-hot label width fed to the network: the dataset's class count, 0 if
        unconditional."""
        return self.dataset.label_dim if self.conditional else 0

    def dataset_info(self) -> dict[str, int]:
        """``img_channels``, ``img_resolution`` (0 for toy2d), ``label_dim`` (as fed to the
        network) and ``num_images``."""
        return {
            "img_channels": self.dataset.img_channels,
            "img_resolution": self.dataset.img_resolution,
            "label_dim": self.label_dim,
            "num_images": len(self.dataset),
        }

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
            self.batch_size,
            self.label_dim,
            self.seed,
            rank=rank,
            world_size=world_size,
            start_nimg=start_nimg,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
