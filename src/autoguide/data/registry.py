"""Datasets by name, built from a config mapping ``{"name": ..., <that dataset's keys>}``.

| name    | keys (defaults)                                                  | item                         |
|---------|------------------------------------------------------------------|------------------------------|
| mnist5k | split ("all"), channels (1)                                      | [C, 32, 32], label 0..9      |
| toy2d   | classes ("AB"), num_samples (65536), data_seed (0)               | [2], label A=0 / B=1         |
| folder  | path, labels_json (null)                                         | [C, H, H], label or 0        |
| npz     | path, layout (null)                                              | [C, H, H], label or 0        |
| shards  | path (folder, brace pattern or list of .tar)                     | [C, H, H], label or 0        |
| latents | path (set or manifest), standardize ("edm2"), vae_path, verify   | [C, h, h] latent, label or 0 |

Every dataset has ``label_dim`` (0 when unlabeled), ``img_channels``, ``img_resolution``
(0 for toy2d) and ``__len__``; items are ``(float32 tensor, int label)``. ``latents`` items are
random draws (``stochastic``; ``autoguide.data.latents``).

``build_reference_dataset`` gives the images a metric compares against: the dataset itself,
except for a latent set, whose reference is its source images, preprocessed as for encoding.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from torch.utils.data import Dataset

from autoguide.data.folder import ImageFolderDataset, NpzDataset
from autoguide.data.latents import LatentShardDataset, read_manifest
from autoguide.data.mnist import MNIST5k
from autoguide.data.shards import IndexedShardDataset
from autoguide.data.toy2d import Toy2DDataset


class TrainingSet(Protocol):
    """What every dataset of ``BUILDERS`` has (see the module docstring)."""

    label_dim: int
    img_channels: int
    img_resolution: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


BUILDERS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": lambda split="all", channels=1: MNIST5k(split, channels),
    "toy2d": lambda classes="AB", num_samples=65536, data_seed=0: Toy2DDataset(classes, num_samples, data_seed),
    "folder": lambda path, labels_json=None: ImageFolderDataset(path, labels_json),
    "npz": lambda path, layout=None: NpzDataset(path, layout),
    "shards": lambda path: IndexedShardDataset(path),
    "latents": lambda path, standardize="edm2", vae_path=None, verify=True: LatentShardDataset(
        path, standardize, vae_path, verify
    ),
}


def build_dataset(cfg: Mapping) -> TrainingSet:
    """The dataset ``cfg["name"]`` with the remaining keys as its arguments; an unknown name,
    unknown key or missing key is an error that lists what is accepted."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in BUILDERS:
        raise ValueError(f"dataset name {name!r} is unknown; expected one of {sorted(BUILDERS)}")
    builder = BUILDERS[name]
    accepted = list(inspect.signature(builder).parameters)
    try:
        inspect.signature(builder).bind(**cfg)
    except TypeError as error:
        raise ValueError(f"dataset {name!r}: {error}; its keys are {accepted} (got {sorted(cfg)})") from error
    return cast(TrainingSet, builder(**cfg))


def build_reference_dataset(cfg: Mapping) -> Dataset | TrainingSet:
    """The images of dataset ``cfg`` in pixel space: ``build_dataset(cfg)``, or for ``latents``
    the set's source images, center-cropped as they were for encoding (float CHW in [-1, 1])."""
    if cfg.get("name") != "latents":
        return build_dataset(cfg)
    from autoguide.data.encode import source_images

    if "path" not in cfg:
        raise ValueError(f"dataset 'latents': missing key 'path' (got {sorted(cfg)})")
    return source_images(read_manifest(cfg["path"]))
