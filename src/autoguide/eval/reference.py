"""Reference statistics under a feature extractor: of a dataset (computed once, cached as ``.npz``)
or read from a published statistics file (``reference_from_file``: EDM2's ``.pkl``, EDM's ``.npz``;
``autoguide.eval.statistics``), which holds ``mu`` and ``sigma`` only, no features.

For FD the reference is summarised by the mean and covariance of its features (over every
image); precision/recall need the features themselves, of which a fixed random subset of at
most ``max_features`` rows is kept (drawn with ``RandomState(0)``). Cache file:

    <cache_dir>/<dataset name>-<hash of the dataset config>-<extractor>-<sha256 of its weights file, 12 hex>.npz

with arrays ``mu``, ``sigma``, ``features`` (float32), ``num_images`` and, for checking,
``dataset`` (the config as JSON) and ``extractor_sha256``. A file whose stored keys or image
count disagree with the current dataset is recomputed; every write is atomic.

The statistics of a latent set (``name: latents``) are those of its source images, center-cropped
as for encoding (``autoguide.data.registry.build_reference_dataset``): samples of latent models
are measured in pixels, after decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch.utils.data import DataLoader, Dataset

from autoguide.data.registry import TrainingSet, build_reference_dataset
from autoguide.eval.features import FeatureExtractor, extract, images_to_uint8
from autoguide.eval.frechet import GaussianAccumulator
from autoguide.eval.statistics import Statistics, StatisticsError, stats_key
from autoguide.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of a reference set: ``mu [D]``, ``sigma [D, D]``, ``features [M, D]``."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    num_images: int
    path: Path

    @property
    def has_features(self) -> bool:
        """Whether feature rows are kept (a dataset reference), as precision/recall need."""
        return len(self.features) > 0


def reference_from_file(stats: Statistics, path: Path, extractor: FeatureExtractor) -> ReferenceStats:
    """``extractor``'s entry (``stats_key``) of the statistics ``stats`` read from ``path``; a missing
    key or a dimension other than the extractor's is refused naming the file."""
    key = stats_key(extractor.name)
    if key not in stats:
        raise StatisticsError(
            f"{path}: holds no {key!r} statistics for the {extractor.name} features (it holds {sorted(stats)}); "
            "measure only what it holds (metrics.features) or give another file"
        )
    mu, sigma = stats[key]["mu"], stats[key]["sigma"]
    dim = getattr(extractor, "dim", None)
    if dim is not None and len(mu) != dim:
        raise StatisticsError(
            f"{path}: {key} statistics are {len(mu)}-dimensional, but {extractor.name} features have {dim}"
        )
    return ReferenceStats(mu, sigma, np.zeros((0, len(mu)), np.float32), 0, path)


def cache_path(
    cache_dir: str | os.PathLike, dataset_cfg: Mapping[str, Any], max_features: int, extractor: FeatureExtractor
) -> Path:
    """Where the statistics of ``dataset_cfg`` under ``extractor`` are cached."""
    key = json.dumps({"dataset": dict(dataset_cfg), "max_features": max_features}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return Path(cache_dir).expanduser() / f"{dataset_cfg['name']}-{digest}-{extractor.name}-{extractor.sha256[:12]}.npz"


def _load(path: Path, dataset_json: str, sha256: str, num_images: int) -> ReferenceStats | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if (
            str(data["dataset"]) != dataset_json
            or str(data["extractor_sha256"]) != sha256
            or int(data["num_images"]) != num_images
        ):
            log.warning("%s was made for another dataset, extractor or image count; recomputing", path)
            return None
        return ReferenceStats(data["mu"], data["sigma"], data["features"], int(data["num_images"]), path)


def dataset_size(dataset: Dataset | TrainingSet) -> int:
    """The number of images of a map-style ``dataset`` (every reference dataset has a length)."""
    return len(cast(Sized, dataset))


def compute_reference(
    dataset: Dataset | TrainingSet,
    extractor: FeatureExtractor,
    max_features: int,
    batch_size: int,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu, sigma, features subset)`` of every image of ``dataset`` (items ``(float image
    in [-1, 1], label)``), streamed in batches."""
    keep = np.zeros(dataset_size(dataset), dtype=np.bool_)
    keep[np.random.RandomState(0).permutation(dataset_size(dataset))[:max_features]] = True
    accumulator: GaussianAccumulator | None = None
    kept, start = [], 0
    for images, _labels in DataLoader(
        cast(Dataset, dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers
    ):
        features = extract(extractor, [images_to_uint8(images)])
        accumulator = accumulator or GaussianAccumulator(features.shape[1])
        accumulator.update(features)
        kept.append(features[keep[start : start + len(features)]])
        start += len(features)
    if accumulator is None:
        raise ValueError("the reference dataset is empty")
    mu, sigma = accumulator.stats()
    return mu, sigma, np.concatenate(kept)


def reference_stats(
    dataset_cfg: Mapping[str, Any],
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike,
    max_features: int = 50_000,
    batch_size: int = 250,
    num_workers: int = 0,
) -> ReferenceStats:
    """Cached statistics of the dataset ``dataset_cfg`` (``autoguide.data.registry``) under
    ``extractor``; computed and written on the first call."""
    dataset_cfg = dict(dataset_cfg)
    dataset = build_reference_dataset(dataset_cfg)
    num_images = dataset_size(dataset)
    path = cache_path(cache_dir, dataset_cfg, max_features, extractor)
    dataset_json = json.dumps(dataset_cfg, sort_keys=True)
    cached = _load(path, dataset_json, extractor.sha256, num_images)
    if cached is not None:
        return cached
    log.info(
        "computing %s reference statistics of %s (%d images) -> %s", extractor.name, dataset_json, num_images, path
    )
    mu, sigma, features = compute_reference(dataset, extractor, max_features, batch_size, num_workers)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            mu=mu,
            sigma=sigma,
            features=features.astype(np.float32),
            num_images=num_images,
            dataset=dataset_json,
            extractor_sha256=extractor.sha256,
        )
    return ReferenceStats(mu, sigma, features, num_images, path)
