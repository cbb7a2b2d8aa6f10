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

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoguide.data.mnist import RESOLUTION as MNIST_RESOLUTION
from autoguide.eval.extractors import build_extractor
from autoguide.eval.features import FeatureExtractor, extract, images_to_uint8
from autoguide.eval.frechet import check_fd_infinity, frechet_distance, frechet_distance_infinity, gaussian_stats, subset_sizes
from autoguide.eval.manifold_pr import precision_recall
from autoguide.eval.reference import ReferenceStats, reference_stats
from autoguide.eval.toy_metrics import ToyMetricsConfig, toy_metrics

SampleChunk = tuple[torch.Tensor, Sequence[int] | None]


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (FD and the toy outlier share)."""
    return metric.startswith("fd_") or metric == "toy_outliers"


def best_value(metric: str, values: Iterable[float]) -> float:
    """The best of ``values`` in the direction of ``metric``."""
    return (min if lower_is_better(metric) else max)(values)


def metric_names(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the metrics the ``metrics`` config measures, in report order."""
    features = metrics.get("features") or []
    pr = ("precision", "recall") if (features and metrics["precision_recall"]) else ()
    fd_inf = ("fd_inf",) if (features and metrics.get("fd_infinity") is not None) else ()
    names = [f"{kind}_{name}" for name in features for kind in ("fd", *fd_inf, *pr)]
    return names + (["toy_logp", "toy_outliers", "toy_precision", "toy_recall"] if metrics.get("toy") is not None else [])


def check_model(net: torch.nn.Module, metrics: Mapping[str, Any]) -> None:
    """Refuse a 2D model without toy metrics and an image model with them."""
    toy_model = int(getattr(net, "img_resolution", 0)) == 0
    if toy_model and (metrics.get("toy") is None or metrics.get("features")):
        raise ValueError("the model makes 2D points (img_resolution 0): use metrics=toy2d (metrics.toy set, no metrics.features)")
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
        raise ValueError(f"metrics.fd_infinity must be null or have exactly the keys points and min_fraction, got {config!r}")
    points, min_fraction = int(config["points"]), float(config["min_fraction"])
    check_fd_infinity(points, min_fraction)
    return {"points": points, "min_fraction": min_fraction}


class Evaluator:
    """``evaluator(chunks) -> {metric: value}`` for chunks ``(samples, class indices or None)``.

    ``metrics``: the ``metrics`` config: ``toy`` (``ToyMetricsConfig`` keys, or null) and
    ``features`` (extractor names); with features also ``reference`` (a dataset config),
    ``precision_recall``, ``k``, ``max_reference_features``, ``batch_size``, ``num_workers``,
    ``cache_dir`` and optionally ``fd_infinity`` (null, or ``points`` and ``min_fraction``).
    ``extractors``: the ``extractors`` config (each network's files).
    """

    def __init__(self, metrics: Mapping[str, Any], extractors: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        toy = metrics.get("toy")
        self.toy = ToyMetricsConfig(**dict(toy)) if toy is not None else None
        names = list(metrics.get("features") or [])
        if self.toy is None and not names:
            raise ValueError("metrics: nothing to measure; set metrics.features (e.g. [mnist]) or metrics.toy")
        unknown = [n for n in names if n not in extractors]
        if unknown:
            raise ValueError(f"metrics.features names {unknown}, but extractors has only {sorted(extractors)}")
        self.extractors: list[FeatureExtractor] = [build_extractor(n, extractors[n], self.device) for n in names]
        self.references: dict[str, ReferenceStats] = {}
        self.fd_infinity = fd_infinity_settings(metrics.get("fd_infinity"))
        if not names:
            return
        if metrics.get("reference") is None:
            raise ValueError(f"metrics.reference: a dataset config is needed for the features {names}")
        self.batch_size = int(metrics["batch_size"])
        self.precision_recall = bool(metrics["precision_recall"])
        self.k = int(metrics["k"])
        for e in self.extractors:
            self.references[e.name] = reference_stats(
                metrics["reference"], e, Path(str(metrics["cache_dir"])), int(metrics["max_reference_features"]),
                self.batch_size, int(metrics["num_workers"]),
            )

    def info(self) -> dict[str, Any]:
        """What the metrics were measured with: reference files, extractor hashes, cards."""
        return {
            e.name: {
                "reference": str(self.references[e.name].path),
                "reference_images": self.references[e.name].num_images,
                "weights": str(e.weights_file),
                "weights_sha256": e.sha256,
                **({"card": e.card} if hasattr(e, "card") else {}),
            }
            for e in self.extractors
        }

    def check_images(self, count: int) -> None:
        """Refuse, before any sampling, a set of ``count`` images too small for ``fd_inf``'s subsets."""
        if self.fd_infinity is not None:
            for reference in self.references.values():
                subset_sizes(count, dim=len(reference.mu), **self.fd_infinity)

    def __call__(self, chunks: Iterable[SampleChunk]) -> dict[str, float]:
        features: dict[str, list[np.ndarray]] = {e.name: [] for e in self.extractors}
        points, classes = [], []
        for samples, labels in chunks:
            if self.toy is not None:
                points.append(samples)
                classes.append(None if labels is None else list(labels))
                continue
            images = images_to_uint8(samples)
            batches = [images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size)]
            for e in self.extractors:
                features[e.name].append(extract(e, batches))
        results: dict[str, float] = {}
        for e in self.extractors:
            results.update(self._feature_metrics(e.name, np.concatenate(features[e.name])))
        if self.toy is not None:
            labels = None if any(c is None for c in classes) else [c for part in classes for c in part]
            results.update(toy_metrics(torch.cat(points), labels, self.toy))
        return results

    def _feature_metrics(self, name: str, generated: np.ndarray) -> dict[str, float]:
        reference = self.references[name]
        mu, sigma = gaussian_stats(generated)
        results = {f"fd_{name}": frechet_distance(mu, sigma, reference.mu, reference.sigma)}
        if self.fd_infinity is not None:
            results[f"fd_inf_{name}"] = frechet_distance_infinity(generated, reference.mu, reference.sigma, **self.fd_infinity)
        if self.precision_recall:
            real = reference.features
            precision, recall = precision_recall(real, generated[: len(real)], self.k, self.device)
            results[f"precision_{name}"], results[f"recall_{name}"] = precision, recall
        return results
