"""Evaluate a (guided) model: sample seed sets with the shared sampler and measure them.

With ``seed_sets = K`` the metrics are measured K times on disjoint seeds (set ``j`` uses every
seed plus ``j * (max(seeds) + 1)``); the result holds the best value of each metric over the
sets (the minimum FID over repeated evaluations, as the EDM2 papers report), their mean, min,
max and std and every set's seeds and values (``summarize``). Images are generated and measured
``chunk_images`` at a time, so memory does not grow with the number of images; latent models'
samples are decoded to pixels by their VAE codec first.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoguide.core.typed_settings import ConfigError, positive_int
from autoguide.data.vae import LatentCodec, codec_for
from autoguide.eval.evaluator import (
    Evaluator,
    MetricsSettings,
    SampleChunk,
    best_value,
    check_image_side,
    check_model,
)
from autoguide.eval.extractors import ExtractorFiles
from autoguide.eval.statistics import Statistics, write_statistics
from autoguide.sample.batch import generate_images
from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.labels import class_labels, model_label_dim
from autoguide.sample.sampler_settings import GenerationSettings
from autoguide.sample.seeds import format_seeds

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvalPlan:
    """Which images an evaluation draws: ``seeds`` (seed set 0), the ``class_labels`` policy
    (``autoguide.sample.labels.class_labels``), the number of disjoint ``seed_sets`` and the
    images held at a time (``chunk_images``)."""

    seeds: tuple[int, ...]
    class_labels: Any = "random"
    seed_sets: int = 1
    chunk_images: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ConfigError("seeds: no seed to evaluate")
        positive_int(self.seed_sets, "seed_sets")
        positive_int(self.chunk_images, "chunk_images")

    def set_seeds(self, index: int) -> list[int]:
        """Seeds of seed set ``index``: ``seeds`` shifted by ``index * (max(seeds) + 1)``, so sets never overlap."""
        shift = index * (max(self.seeds) + 1)
        return [s + shift for s in self.seeds]


def sample_chunks(
    net: nn.Module,
    terms: Sequence[GuidanceTerm],
    seeds: Sequence[int],
    classes: Sequence[int] | None,
    generation: GenerationSettings,
    device: torch.device,
    chunk: int,
    codec: LatentCodec | None = None,
) -> Iterator[SampleChunk]:
    """Samples of ``seeds`` (class ``classes[i]``), ``chunk`` images at a time, so that only
    one chunk of images is ever held; each image depends on its own seed only. Latent
    samples are decoded to images by ``codec``."""
    for start in range(0, len(seeds), chunk):
        part = slice(start, start + chunk)
        labels = None if classes is None else list(classes[part])
        samples = generate_images(net, seeds[part], labels, terms, device=device, **generation.options())
        yield (samples if codec is None else codec.decode(samples.to(device)).cpu()), labels


def summarize(sets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Over the seed sets' ``metrics``: the best value of each metric (``metrics``, the EDM2 papers'
    minimum FID), and its ``mean``, ``min``, ``max`` and ``std`` (sample std, ``ddof = 1``; 0 for one set)."""
    names = list(sets[0]["metrics"])
    values = {m: np.array([s["metrics"][m] for s in sets], dtype=np.float64) for m in names}
    return {
        "metrics": {m: best_value(m, v.tolist()) for m, v in values.items()},
        "mean": {m: float(v.mean()) for m, v in values.items()},
        "min": {m: float(v.min()) for m, v in values.items()},
        "max": {m: float(v.max()) for m, v in values.items()},
        "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
        "sets": list(sets),
    }


def set_record(
    plan: EvalPlan,
    index: int,
    images: int,
    metrics: Mapping[str, float],
    started: float,
    stats: Statistics,
    stats_dir: Path | None,
) -> dict[str, Any]:
    """One seed set's entry of the report; its generated-feature statistics written to
    ``<stats_dir>/set<index>.pkl`` (EDM2's layout) when ``stats_dir`` is given."""
    record = {
        "seeds": format_seeds(plan.set_seeds(index)),
        "images": images,
        "metrics": dict(metrics),
        "seconds": round(time.time() - started, 2),
    }
    if stats_dir is not None and stats:
        record["statistics"] = str(write_statistics(stats, Path(stats_dir) / f"set{index}.pkl"))
    log.info("seed set %d/%d (%s): %s", index + 1, plan.seed_sets, record["seeds"], record["metrics"])
    return record


def evaluate_model(
    net: nn.Module,
    terms: Sequence[GuidanceTerm],
    plan: EvalPlan,
    evaluator: Evaluator,
    generation: GenerationSettings,
    device: torch.device,
    codec: LatentCodec | None = None,
    stats_dir: Path | None = None,
) -> dict[str, Any]:
    """Metrics of ``net`` guided by ``terms`` over the plan's seed sets (``summarize``), every set
    measured in this process; each set's feature statistics written to ``stats_dir`` if given."""
    evaluator.check_images(len(plan.seeds))
    sets = []
    for index in range(plan.seed_sets):
        started = time.time()
        seeds, classes = class_labels(plan.class_labels, plan.set_seeds(index), model_label_dim(net))
        chunks = sample_chunks(net, terms, seeds, classes, generation, device, plan.chunk_images, codec)
        metrics, stats = evaluator.measure(chunks)
        sets.append(set_record(plan, index, len(seeds), metrics, started, stats, stats_dir))
    return summarize(sets)


class Evaluation:
    """Measures models the same way: samples of the ``plan``'s seed sets made with
    ``generation`` on ``device`` (latent models decoded with the VAE at ``vae_path``), scored as
    ``metrics`` says with the feature networks of ``extractors``. The ``Evaluator`` (and
    with it the reference statistics) is built on first use, after the first model was checked."""

    def __init__(
        self,
        plan: EvalPlan,
        generation: GenerationSettings,
        metrics: MetricsSettings,
        extractors: ExtractorFiles,
        device: torch.device,
        vae_path: str | None = None,
    ) -> None:
        self.plan = plan
        self.generation = generation
        self.metrics = metrics
        self.extractors = extractors
        self.device = device
        self.vae_path = vae_path

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        return Evaluator(self.metrics, self.extractors, self.device)

    def metric_names(self) -> list[str]:
        """The metrics measured, in report order."""
        return self.metrics.names()

    def __call__(self, net: nn.Module, terms: Sequence[GuidanceTerm], stats_dir: Path | None = None) -> dict[str, Any]:
        """``evaluate_model`` of ``net`` guided by ``terms`` (the model checked against the metrics first)."""
        check_model(net, self.metrics)
        codec = codec_for(net, self.vae_path, self.device)
        side = int(getattr(net, "img_resolution", 0)) * (1 if codec is None else codec.factor)
        if side:
            check_image_side(side, self.metrics)
        return evaluate_model(net, terms, self.plan, self.evaluator, self.generation, self.device, codec, stats_dir)
