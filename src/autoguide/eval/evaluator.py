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

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoguide.data.mnist import RESOLUTION as MNIST_RESOLUTION
from autoguide.eval.extractors import build_extractor, check_detectors
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


def reference_is_file(metrics: Mapping[str, Any]) -> bool:
    """Whether ``metrics.reference`` names a statistics file (a path) rather than a dataset config."""
    return isinstance(metrics.get("reference"), (str, Path))


def metric_names(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the metrics the ``metrics`` config measures, in report order."""
    features = metrics.get("features") or []
    pr = (
        ("precision", "recall") if (features and metrics["precision_recall"] and not reference_is_file(metrics)) else ()
    )
    fd_inf = ("fd_inf",) if (features and metrics.get("fd_infinity") is not None) else ()
    names = [f"{kind}_{name}" for name in features for kind in ("fd", *fd_inf, *pr)]
    return names + (
        ["toy_logp", "toy_outliers", "toy_precision", "toy_recall"] if metrics.get("toy") is not None else []
    )


def check_model(net: torch.nn.Module, metrics: Mapping[str, Any]) -> None:
    """Refuse a 2D model without toy metrics and an image model with them."""
    toy_model = int(getattr(net, "img_resolution", 0)) == 0
    if toy_model and (metrics.get("toy") is None or metrics.get("features")):
        raise ValueError(
            "the model makes 2D points (img_resolution 0): use metrics=toy2d (metrics.toy set, no metrics.features)"
        )
    if not toy_model and metrics.get("toy") is not None:
        raise ValueError("metrics.toy is set, but the model makes images; use image metrics (e.g. metrics=mnist)")


FIXED_SIDES = {"mnist": MNIST_RESOLUTION}
"""Feature networks that take one image size only (side in pixels)."""


def check_image_side(side: int, metrics: Mapping[str, Any]) -> None:
    """Refuse, before any reference statistics are computed, a feature network of
    ``metrics.features`` that cannot take the model's ``side`` x ``side`` images."""
    for name in metrics.get("features") or []:
        need = FIXED_SIDES.get(name)
        if need is not None and side != need:
            raise ValueError(
                f"metrics.features has {name!r}, whose network takes {need}x{need} images, but the model makes "
                f"{side}x{side} images; choose features for that size "
                "(e.g. metrics=images 'metrics.features=[inception]')"
            )


def fd_infinity_settings(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``metrics.fd_infinity`` checked: null, or exactly ``points`` (>= 2) and ``min_fraction`` in (0, 1)."""
    if config is None:
        return None
    if not isinstance(config, Mapping) or set(config) != {"points", "min_fraction"}:
        raise ValueError(
            f"metrics.fd_infinity must be null or have exactly the keys points and min_fraction, got {config!r}"
        )
    points, min_fraction = int(config["points"]), float(config["min_fraction"])
    check_fd_infinity(points, min_fraction)
    return {"points": points, "min_fraction": min_fraction}


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
    """``evaluator(chunks) -> {metric: value}`` for chunks ``(samples, class indices or None)``.

    ``metrics``: the ``metrics`` config: ``toy`` (``ToyMetricsConfig`` keys, or null) and
    ``features`` (extractor names); with features also ``reference`` (a dataset config, or the
    path of a statistics file: ``autoguide.eval.statistics``), ``precision_recall``, ``k``,
    ``max_reference_features``, ``batch_size``, ``num_workers``, ``cache_dir`` and optionally
    ``fd_infinity`` (null, or ``points`` and ``min_fraction``). ``extractors``: the ``extractors``
    config (each network's files). A statistics file holds no features: precision/recall are
    skipped with one logged line.
    """

    def __init__(
        self, metrics: Mapping[str, Any], extractors: Mapping[str, Any], device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        toy = metrics.get("toy")
        self.toy = ToyMetricsConfig(**dict(toy)) if toy is not None else None
        names = list(metrics.get("features") or [])
        if self.toy is None and not names:
            raise ValueError("metrics: nothing to measure; set metrics.features (e.g. [mnist]) or metrics.toy")
        unknown = [n for n in names if n not in extractors]
        if unknown:
            raise ValueError(f"metrics.features names {unknown}, but extractors has only {sorted(extractors)}")
        check_detectors(names, extractors)
        self.extractors: list[FeatureExtractor] = [build_extractor(n, extractors[n], self.device) for n in names]
        self.references: dict[str, ReferenceStats] = {}
        self.fd_infinity = fd_infinity_settings(metrics.get("fd_infinity"))
        self.stats_file: Path | None = None
        if not names:
            return
        if metrics.get("reference") in (None, "???"):
            raise ValueError(
                f"metrics.reference: the features {names} need a statistics file (e.g. EDM2's img512.pkl) or a dataset config"
            )
        self.batch_size = int(metrics["batch_size"])
        self.precision_recall = bool(metrics["precision_recall"])
        self.k = int(metrics["k"])
        if reference_is_file(metrics):
            self.stats_file = Path(str(metrics["reference"])).expanduser()
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
                metrics["reference"],
                e,
                Path(str(metrics["cache_dir"])),
                int(metrics["max_reference_features"]),
                self.batch_size,
                int(metrics["num_workers"]),
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
        points, classes = [], []
        for samples, labels in chunks:
            points.append(samples)
            classes.append(None if labels is None else list(labels))
        labels = None if any(c is None for c in classes) else [c for part in classes for c in part]
        return toy_metrics(torch.cat(points), labels, self.toy), {}

    def __call__(self, chunks: Iterable[SampleChunk]) -> dict[str, float]:
        return self.measure(chunks)[0]
