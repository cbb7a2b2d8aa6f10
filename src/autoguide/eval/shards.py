"""Sharded, resumable evaluation: the images of every seed set are cut into shards of a fixed
number of images, each measured once, by whichever process owns it, into a file of float64
partial sums; the metrics come from the merged sums.

- **Plan** (``plan_shards``): seed set ``j``'s images (``class_labels`` applied to its seeds) in
  consecutive shards of ``shard_images``; a shard is named by its set and image range
  (``set0-0000000-0000999``). The cut does not depend on the number of processes, so any worker
  count, and any rerun, computes the same shard files.
- **Workers** each own a contiguous share of all shards (``runtime.rank_slice``): torchrun ranks
  (``RANK``, ``WORLD_SIZE``) or SLURM array tasks (``worker``/``workers`` given explicitly,
  ``slurm/eval.sbatch``).
- **Shard file** ``<dir>/<name>.npz`` (written atomically): the configuration fingerprint (JSON),
  the shard's seeds and classes, and per extractor ``e`` ``e.count``, ``e.total`` (sum x),
  ``e.outer`` (sum x x^T, float64) and ``e.rows`` (the shard's share of the first
  ``sample_rows`` images of the set: the bounded sample precision/recall read). A finished shard
  is skipped on a rerun; a shard of another configuration is refused, naming it and the keys
  that differ.
- **Merge** (``merge_sets``): per set the shards' sums added in image order
  (``FeatureSums.merge``), then ``Evaluator.feature_metrics``. A shard's sums depend on its images
  only, so a merge of shards made by several processes equals one process's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoguide.data.vae import codec_for
from autoguide.eval.evaluate import Evaluation, sample_chunks, set_record, summarize
from autoguide.eval.evaluator import FeatureSums, GaussianAccumulator, check_model
from autoguide.io import atomic_path
from autoguide.runtime.process import RankInfo, rank_slice
from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.labels import class_labels, model_label_dim

log = logging.getLogger(__name__)

FORMAT = "autoguide-eval-shard/1"


class ShardError(ValueError):
    """A shard file that does not belong to this evaluation or cannot be read; names the file."""


@dataclass(frozen=True)
class Shard:
    """Images ``start .. start + len(seeds) - 1`` of seed set ``set_index``: their seeds and classes."""

    set_index: int
    start: int
    seeds: tuple[int, ...]
    classes: tuple[int, ...] | None

    @property
    def name(self) -> str:
        return f"set{self.set_index}-{self.start:07d}-{self.start + len(self.seeds) - 1:07d}"


def plan_shards(evaluation: Evaluation, label_dim: int, shard_images: int) -> list[Shard]:
    """Every shard of the evaluation's seed sets, set by set, in image order."""
    shards = []
    for index in range(evaluation.plan.seed_sets):
        seeds, classes = class_labels(evaluation.plan.class_labels, evaluation.plan.set_seeds(index), label_dim)
        for start in range(0, len(seeds), shard_images):
            part = slice(start, start + shard_images)
            shards.append(Shard(index, start, tuple(seeds[part]), None if classes is None else tuple(classes[part])))
    return shards


def _fingerprint_json(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps({"format": FORMAT, **fingerprint}, sort_keys=True, default=str)


def save_shard(path: Path, fingerprint: Mapping[str, Any], shard: Shard, sums: Mapping[str, FeatureSums]) -> None:
    """The shard's sums and identity, atomically."""
    arrays: dict[str, Any] = {"fingerprint": _fingerprint_json(fingerprint), "seeds": np.array(shard.seeds, np.int64)}
    if shard.classes is not None:
        arrays["classes"] = np.array(shard.classes, np.int64)
    for name, part in sums.items():
        acc = part.accumulator
        arrays.update(
            {f"{name}.count": acc.n, f"{name}.total": acc.total, f"{name}.outer": acc.outer, f"{name}.rows": part.rows}
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_shard(
    path: Path,
    fingerprint: Mapping[str, Any],
    shard: Shard,
    extractors: Sequence[str],
    read_sums: bool = True,
) -> dict[str, FeatureSums] | None:
    """The sums of a finished shard (``{}`` when only checked, ``read_sums=False``: the arrays of
    an ``.npz`` are read on access); ``None`` if it is not there yet; ``ShardError`` naming the file
    if it was made for another configuration or is unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = json.loads(str(data["fingerprint"]))
            expected = json.loads(_fingerprint_json(fingerprint))
            if stored != expected:
                keys = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
                raise ShardError(
                    f"{path}: this shard was made by another evaluation (differing keys: {', '.join(keys)}); "
                    "use another output folder, or delete the shard folder to start over"
                )
            classes = tuple(data["classes"].tolist()) if "classes" in data.files else None
            if tuple(data["seeds"].tolist()) != shard.seeds or classes != shard.classes:
                raise ShardError(f"{path}: holds other seeds or classes than shard {shard.name}")
            sums: dict[str, FeatureSums] = {}
            for name in extractors if read_sums else ():
                accumulator = GaussianAccumulator(len(data[f"{name}.total"]))
                accumulator.n = int(data[f"{name}.count"])
                accumulator.total, accumulator.outer = data[f"{name}.total"], data[f"{name}.outer"]
                sums[name] = FeatureSums(accumulator, data[f"{name}.rows"])
            return sums
    except ShardError:
        raise
    except Exception as err:
        raise ShardError(
            f"{path}: not a readable evaluation shard ({type(err).__name__}: {err}); delete it to recompute"
        ) from None


class ShardedEvaluation:
    """``Evaluation`` of one model over shards in ``folder``: ``run(worker)`` measures the worker's
    missing shards, ``merge()`` the report once every shard is there. ``fingerprint``: everything
    the shards' contents depend on (models and their hashes, guidance, sampler, seeds, extractors)."""

    def __init__(
        self,
        evaluation: Evaluation,
        net: nn.Module,
        terms: Sequence[GuidanceTerm],
        folder: Path,
        shard_images: int,
        fingerprint: Mapping[str, Any],
    ) -> None:
        check_model(net, evaluation.metrics)
        if evaluation.evaluator.toy is not None or evaluation.evaluator.fd_infinity is not None:
            raise ValueError(
                "sharded evaluation measures feature metrics (FD, precision/recall); "
                "measure toy metrics and fd_infinity in one process (shards.images=null)"
            )
        self.evaluation, self.net, self.terms = evaluation, net, list(terms)
        self.folder = Path(folder)
        self.shards = plan_shards(evaluation, model_label_dim(net), shard_images)
        self.sample_rows = evaluation.evaluator.sample_rows()
        self.fingerprint = {**fingerprint, "shard_images": shard_images, "sample_rows": self.sample_rows}
        self.names = [e.name for e in evaluation.evaluator.extractors]

    def path(self, shard: Shard) -> Path:
        return self.folder / f"{shard.name}.npz"

    def run(self, worker: RankInfo) -> dict[str, list[str]]:
        """Measure the worker's share of the shards that are not finished; ``{"computed", "reused"}``
        shard names."""
        evaluation = self.evaluation
        codec = codec_for(self.net, evaluation.vae_path, evaluation.device)
        done: dict[str, list[str]] = {"computed": [], "reused": []}
        for shard in self.shards[rank_slice(len(self.shards), worker)]:
            path = self.path(shard)
            if load_shard(path, self.fingerprint, shard, self.names, read_sums=False) is not None:
                done["reused"].append(shard.name)
                continue
            chunks = sample_chunks(
                self.net,
                self.terms,
                list(shard.seeds),
                None if shard.classes is None else list(shard.classes),
                evaluation.generation,
                evaluation.device,
                evaluation.plan.chunk_images,
                codec,
            )
            sums = evaluation.evaluator.feature_sums(chunks, keep=self.sample_rows - shard.start)
            save_shard(path, self.fingerprint, shard, sums)
            done["computed"].append(shard.name)
            log.info("shard %s: %d images measured -> %s", shard.name, len(shard.seeds), path)
        return done

    def missing(self) -> list[str]:
        """Names of the shards not finished yet (any shard of another configuration is refused)."""
        return [
            s.name
            for s in self.shards
            if load_shard(self.path(s), self.fingerprint, s, self.names, read_sums=False) is None
        ]

    def merge(self, stats_dir: Path | None = None) -> dict[str, Any]:
        """The report over every seed set (``summarize``) from the finished shards; each set's
        generated-feature statistics written to ``stats_dir`` if given."""
        started = time.time()
        sets = []
        for index in range(self.evaluation.plan.seed_sets):
            shards = [s for s in self.shards if s.set_index == index]
            parts = [load_shard(self.path(s), self.fingerprint, s, self.names) for s in shards]
            missing = [s.name for s, p in zip(shards, parts, strict=True) if p is None]
            if missing:
                raise ShardError(f"{self.folder}: shards {missing} are not finished; run their workers first")
            sums = {name: FeatureSums.merge([p[name] for p in parts if p is not None]) for name in self.names}
            metrics, stats = self.evaluation.evaluator.feature_metrics(sums)
            images = sum(len(s.seeds) for s in shards)
            sets.append(set_record(self.evaluation.plan, index, images, metrics, started, stats, stats_dir))
        return summarize(sets)
