"""Metrics of generated samples against a reference: built once (extractors, cached reference
statistics), then applied to any number of sample sets.

Image samples: for every configured extractor ``e``, ``fd_<e>`` (Fréchet distance of the
feature Gaussians), if enabled ``fd_inf_<e>`` (FD extrapolated to infinitely many samples,
Chong & Forsyth 2020; ``metrics.fd_infinity``: ``points`` and ``min_fraction``) and
``precision_<e>`` / ``recall_<e>`` (k-NN manifolds, k = 3)
against the reference features. 2D toy samples: the exact metrics of
``autoguide.eval.toy_metrics``. Metric directions: ``fd_*`` and ``toy_outliers`` are better
when lower, everything else when higher (``lower_is_better``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoguide.core.typed_settings import ConfigError, number, positive_int
from autoguide.data.mnist import RESOLUTION as MNIST_RESOLUTION
from autoguide.eval.extractors import ExtractorFiles, build_extractor, check_detectors
from autoguide.eval.features import FeatureExtractor, extract, images_to_uint8
from autoguide.eval.frechet import (
    GaussianAccumulator,
    check_fd_infinity,
    frechet_distance,
    frechet_distance_infinity,
    subset_sizes,
)
from autoguide.eval.manifold_pr import precision_recall
from autoguide.eval.reference import (
    ReferenceStats,
    reference_from_file,
    reference_stats,
)
from autoguide.eval.statistics import Statistics, read_statistics, stats_key
from autoguide.eval.toy_metrics import ToyMetricsConfig, toy_metrics
from autoguide.io import file_sha256

log = logging.getLogger(__name__)

SampleChunk = tuple[torch.Tensor, Sequence[int] | None]


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (FD and the toy outlier share)."""
    return metric.startswith("fd_") or metric == "toy_outliers"


def best_value(metric: str, values: Iterable[float]) -> float:
    """The best of ``values`` in the direction of ``metric``."""
    return (min if lower_is_better(metric) else max)(values)


@dataclass(frozen=True, kw_only=True)
class FdInfinitySettings:
    """``metrics.fd_infinity``: FD at ``points`` subset sizes from ``min_fraction`` of the samples
    to all of them, extrapolated to infinitely many (``autoguide.eval.frechet``)."""

    points: int
    min_fraction: float

    def __post_init__(self) -> None:
        positive_int(self.points, "metrics.fd_infinity.points", "an integer >= 2")
        number(self.min_fraction, "metrics.fd_infinity.min_fraction", 0, 1, low_open=True, high_open=True)
        try:
            check_fd_infinity(self.points, self.min_fraction)
        except ValueError as error:
            raise ConfigError(f"metrics.{error}") from None


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    """The ``metrics`` node: ``toy`` (the 2D toy's exact metrics, or ``None``) or ``features``
    (extractor names); with features also ``reference`` (a dataset config of
    ``autoguide.data.registry``, or the path of a statistics file: ``autoguide.eval.statistics``),
    ``precision_recall``, ``k``, ``max_reference_features``, ``batch_size`` (images per
    feature-network batch), ``num_workers`` (reading the reference), ``cache_dir`` (reference
    statistics) and ``fd_infinity``."""

    features: tuple[str, ...] = ()
    reference: Any = None
    precision_recall: bool = True
    fd_infinity: FdInfinitySettings | None = None
    k: int = 3
    max_reference_features: int = 50_000
    batch_size: int = 250
    num_workers: int = 0
    cache_dir: str = "refs"
    toy: ToyMetricsConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if self.reference == "???":
            object.__setattr__(self, "reference", None)
        if self.toy is None and not self.features:
            raise ConfigError("metrics: nothing to measure; set metrics.features (e.g. [mnist]) or metrics.toy")
        positive_int(self.k, "metrics.k")
        positive_int(self.max_reference_features, "metrics.max_reference_features")
        positive_int(self.batch_size, "metrics.batch_size")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"metrics.num_workers={self.num_workers!r}: expected an integer >= 0")
        if not (self.reference is None or isinstance(self.reference, (str, Path, Mapping))):
            raise ConfigError(
                f"metrics.reference={self.reference!r}: expected a statistics file or a dataset config {{name: ...}}"
            )

    @property
    def reference_is_file(self) -> bool:
        """Whether ``reference`` names a statistics file (a path) rather than a dataset config."""
        return isinstance(self.reference, (str, Path))

    def names(self) -> list[str]:
        """Names of the metrics measured, in report order."""
        features = self.features
        pr = ("precision", "recall") if (features and self.precision_recall and not self.reference_is_file) else ()
        fd_inf = ("fd_inf",) if (features and self.fd_infinity is not None) else ()
        names = [f"{kind}_{name}" for name in features for kind in ("fd", *fd_inf, *pr)]
        return names + (["toy_logp", "toy_outliers", "toy_precision", "toy_recall"] if self.toy is not None else [])


def check_model(net: torch.nn.Module, metrics: MetricsSettings) -> None:
    """Refuse a 2D model without toy metrics and an image model with them."""
    toy_model = int(getattr(net, "img_resolution", 0)) == 0
    if toy_model and (metrics.toy is None or metrics.features):
        raise ValueError(
            "the model makes 2D points (img_resolution 0): use metrics=toy2d (metrics.toy set, no metrics.features)"
        )
    if not toy_model and metrics.toy is not None:
        raise ValueError("metrics.toy is set, but the model makes images; use image metrics (e.g. metrics=mnist)")


FIXED_SIDES = {"mnist": MNIST_RESOLUTION}
"""Feature networks that take one image size only (side in pixels)."""


def check_image_side(side: int, metrics: MetricsSettings) -> None:
    """Refuse, before any reference statistics are computed, a feature network of
    ``metrics.features`` that cannot take the model's ``side`` x ``side`` images."""
    for name in metrics.features:
        need = FIXED_SIDES.get(name)
        if need is not None and side != need:
            raise ValueError(
                f"metrics.features has {name!r}, whose network takes {need}x{need} images, but the model makes "
                f"{side}x{side} images; choose features for that size "
                "(e.g. metrics=images 'metrics.features=[inception]')"
            )


@dataclass
class FeatureSums:
    """What a set of images contributes to one extractor's metrics: the float64 partial sums of its
    features (``GaussianAccumulator``: ``n``, ``sum x``, ``sum x x^T``) and its first ``rows`` in
    image order (the bounded sample that precision/recall and ``fd_inf`` read)."""

    accumulator: GaussianAccumulator
    rows: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray, keep: int | None) -> FeatureSums:
        """Sums of ``features [N, D]``, keeping the first ``keep`` rows (all with ``None``)."""
        accumulator = GaussianAccumulator(features.shape[1])
        accumulator.update(features)
        return cls(accumulator, np.asarray(features[: len(features) if keep is None else max(keep, 0)], np.float32))

    @classmethod
    def merge(cls, parts: Sequence[FeatureSums]) -> FeatureSums:
        """The sums of consecutive image ranges ``parts`` (in image order) as one."""
        accumulator = GaussianAccumulator(len(parts[0].accumulator.total))
        for part in parts:
            accumulator.add(part.accumulator)
        return cls(accumulator, np.concatenate([p.rows for p in parts]))


class Evaluator:
    """``evaluator(chunks) -> {metric: value}`` for chunks ``(samples, class indices or None)``,
    measuring what ``metrics`` (``MetricsSettings``) asks with the feature networks of
    ``extractors`` (their files). A statistics file holds no features: precision/recall are
    skipped with one logged line.
    """

    def __init__(
        self, metrics: MetricsSettings, extractors: ExtractorFiles, device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.toy = metrics.toy
        names = list(metrics.features)
        check_detectors(names)
        self.extractors: list[FeatureExtractor] = [build_extractor(n, extractors, self.device) for n in names]
        self.references: dict[str, ReferenceStats] = {}
        self.fd_infinity = None if metrics.fd_infinity is None else dataclasses.asdict(metrics.fd_infinity)
        self.stats_file: Path | None = None
        self.batch_size = metrics.batch_size
        self.precision_recall = metrics.precision_recall
        self.k = metrics.k
        if not names:
            return
        if metrics.reference is None:
            raise ConfigError(
                f"metrics.reference: the features {names} need a statistics file (e.g. EDM2's img512.pkl) "
                "or a dataset config"
            )
        if metrics.reference_is_file:
            self.stats_file = Path(str(metrics.reference)).expanduser()
            stats = read_statistics(self.stats_file)
            self.references = {e.name: reference_from_file(stats, self.stats_file, e) for e in self.extractors}
            unused = sorted(set(stats) - {stats_key(e.name) for e in self.extractors})
            if unused:
                log.info(
                    "%s also holds %s; add their extractors to metrics.features to measure them",
                    self.stats_file,
                    unused,
                )
            if self.precision_recall:
                log.warning(
                    "precision/recall skipped: the statistics file %s holds mu and sigma, no features; "
                    "give a reference dataset (metrics.reference={name: ...}) to measure them",
                    self.stats_file,
                )
                self.precision_recall = False
            return
        for e in self.extractors:
            self.references[e.name] = reference_stats(
                metrics.reference,
                e,
                Path(metrics.cache_dir),
                metrics.max_reference_features,
                self.batch_size,
                metrics.num_workers,
            )

    def info(self) -> dict[str, Any]:
        """What the metrics were measured with: reference files and their hashes, extractor hashes, cards."""
        return {
            e.name: {
                "reference": str(self.references[e.name].path),
                "reference_sha256": file_sha256(self.references[e.name].path),
                "reference_images": self.references[e.name].num_images,
                "weights": str(e.weights_file),
                "weights_sha256": e.sha256,
                **({"card": e.card} if hasattr(e, "card") else {}),
            }
            for e in self.extractors
        }

    def sample_rows(self) -> int:
        """How many generated feature rows (the first of a set) precision/recall compare with the reference's."""
        return max((len(r.features) for r in self.references.values()), default=0) if self.precision_recall else 0

    def check_images(self, count: int) -> None:
        """Refuse, before any sampling, a set of ``count`` images too small for ``fd_inf``'s subsets."""
        if self.fd_infinity is not None:
            for reference in self.references.values():
                subset_sizes(count, dim=len(reference.mu), **self.fd_infinity)

    def feature_sums(self, chunks: Iterable[SampleChunk], keep: int | None = None) -> dict[str, FeatureSums]:
        """``FeatureSums`` of every extractor over the images of ``chunks`` (keeping the first ``keep`` rows)."""
        features: dict[str, list[np.ndarray]] = {e.name: [] for e in self.extractors}
        for samples, _labels in chunks:
            images = images_to_uint8(samples)
            batches = [images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size)]
            for e in self.extractors:
                features[e.name].append(extract(e, batches))
        return {name: FeatureSums.of(np.concatenate(parts), keep) for name, parts in features.items()}

    def feature_metrics(self, sums: Mapping[str, FeatureSums]) -> tuple[dict[str, float], Statistics]:
        """``(metrics, statistics of the generated features)`` from every extractor's sums."""
        results: dict[str, float] = {}
        stats: Statistics = {}
        for e in self.extractors:
            reference, part = self.references[e.name], sums[e.name]
            mu, sigma = part.accumulator.stats()
            stats[stats_key(e.name)] = {"mu": mu, "sigma": sigma}
            results[f"fd_{e.name}"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
            if self.fd_infinity is not None:
                if len(part.rows) != part.accumulator.n:
                    raise ValueError("fd_infinity needs every feature row; it is not measured over shards")
                results[f"fd_inf_{e.name}"] = frechet_distance_infinity(
                    part.rows, reference.mu, reference.sigma, **self.fd_infinity
                )
            if self.precision_recall:
                real = reference.features
                precision, recall = precision_recall(real, part.rows[: len(real)], self.k, self.device)
                results[f"precision_{e.name}"], results[f"recall_{e.name}"] = precision, recall
        return results, stats

    def measure(self, chunks: Iterable[SampleChunk]) -> tuple[dict[str, float], Statistics]:
        """``(metrics, statistics of the generated features)`` of the samples of ``chunks``."""
        if self.toy is None:
            return self.feature_metrics(self.feature_sums(chunks))
        points: list[torch.Tensor] = []
        classes: list[list[int] | None] = []
        for samples, labels in chunks:
            points.append(samples)
            classes.append(None if labels is None else list(labels))
        every = [c for part in classes if part is not None for c in part]
        return toy_metrics(torch.cat(points), None if None in classes else every, self.toy), {}

    def __call__(self, chunks: Iterable[SampleChunk]) -> dict[str, float]:
        return self.measure(chunks)[0]
