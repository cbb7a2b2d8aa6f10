"""``autoguide-eval``: generate samples with the shared sampler and report every metric as JSON
(Hydra app, ``conf/eval/evaluate.yaml``; sampling options as for ``autoguide-generate``).

    autoguide-eval model=<file> guide=<file> guidance.weight=2.0 metrics=mnist seeds=0-4999
    autoguide-eval model=<file> metrics=toy2d class_labels=0 seeds=0-9999 seed_sets=3

With ``seed_sets=K`` the metrics are measured K times on disjoint seeds (set ``j`` uses every
seed of ``seeds`` plus ``j * (max(seeds) + 1)``); ``metrics`` holds the best value of each
metric over the sets (the minimum FID over repeated evaluations, as the EDM2 papers report),
``mean`` the average, ``sets`` every set's seeds and values. Written to
``<output.dir>/metrics.json``; a preview of the first ``preview_images`` samples of set 0 is
written in ``output.formats`` by the sampler's writers. Latent models (a ``latent`` entry in
the model card) are decoded with the VAE at ``vae_path`` before anything is measured.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from autoguide.eval.app import run_app
from autoguide.eval.evaluator import Evaluator, SampleChunk, best_value, check_model
from autoguide.io import write_text_atomic
from autoguide.latent import load_latent_codec
from autoguide.sample.batch import generate_images
from autoguide.sample.config import build_guidance
from autoguide.sample.distributed import rank_from_env
from autoguide.sample.generate import ModelLoader, resolve_device, write_outputs
from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.labels import class_labels
from autoguide.sample.pair_config import apply_pair
from autoguide.sample.seeds import parse_seeds

log = logging.getLogger(__name__)


def set_seeds(seeds: Sequence[int], index: int) -> list[int]:
    """Seeds of seed set ``index``: ``seeds`` shifted by ``index * (max(seeds) + 1)``, so sets never overlap."""
    shift = index * (max(seeds) + 1)
    return [s + shift for s in seeds]


def format_seeds(seeds: Sequence[int]) -> str:
    """Compact inclusive ranges, ``[0, 1, 2, 7]`` -> ``"0-2,7"`` (``parse_seeds`` reads it back)."""
    parts, ordered = [], sorted(seeds)
    start = prev = ordered[0]
    for s in [*ordered[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if s is not None:
            start = prev = s
    return ",".join(parts)


def json_text(value: Any) -> str:
    """Strict JSON (indented): non-finite floats such as ``sampler.S_max = inf`` become strings."""

    def ready(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: ready(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [ready(x) for x in v]
        return v

    return json.dumps(ready(value), indent=2, default=str, allow_nan=False) + "\n"


def plain(value: Any) -> Any:
    """An OmegaConf list/dict as plain Python (interpolations resolved); anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def sampler_options(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of ``generate_images`` besides the models, seeds and labels."""
    return {"batch_size": int(cfg.batch_size), "precision": str(cfg.precision), **plain(cfg.sampler)}


@functools.lru_cache(maxsize=2)
def _codec(spec_json: str, vae_path: str | None, device: str) -> nn.Module:
    return load_latent_codec({"latent": json.loads(spec_json)}, vae_path, device)


def latent_codec(net: nn.Module, vae_path: str | None, device: torch.device) -> nn.Module | None:
    """The VAE codec of a latent model (its card's ``latent`` entry; loaded once and kept for
    later calls), or None for pixel and 2D models."""
    spec = getattr(net, "card", {}).get("latent")
    return None if spec is None else _codec(json.dumps(spec, sort_keys=True), None if vae_path is None else str(vae_path), str(device))


def sample_chunks(
    net: nn.Module, terms: Sequence[GuidanceTerm], seeds: Sequence[int], classes: Sequence[int] | None,
    options: dict[str, Any], device: torch.device, chunk: int, progress: bool = False, codec: nn.Module | None = None,
) -> Iterator[SampleChunk]:
    """Samples of ``seeds`` (class ``classes[i]``), ``chunk`` images at a time, so that only
    one chunk of images is ever held; each image depends on its own seed only. Latent
    samples are decoded to images by ``codec``."""
    for start in range(0, len(seeds), chunk):
        part = slice(start, start + chunk)
        labels = None if classes is None else list(classes[part])
        samples = generate_images(net, seeds[part], labels, terms, device=device, progress=progress, **options)
        yield (samples if codec is None else codec.decode(samples.to(device)).cpu()), labels


def evaluate_model(
    net: nn.Module, terms: Sequence[GuidanceTerm], cfg: DictConfig, evaluator: Evaluator, device: torch.device
) -> dict[str, Any]:
    """Metrics of ``net`` guided by ``terms`` over ``cfg.seed_sets`` seed sets:
    ``{"metrics": best per metric, "mean": ..., "sets": [{"seeds", "images", "metrics", "seconds"}]}``."""
    seeds, policy = parse_seeds(plain(cfg.seeds)), plain(cfg.class_labels)
    num_sets = int(cfg.seed_sets)
    if num_sets < 1:
        raise ValueError(f"seed_sets must be >= 1, got {num_sets}")
    evaluator.check_images(len(seeds))
    options = sampler_options(cfg)
    codec = latent_codec(net, cfg.get("vae_path"), device)
    sets = []
    for index in range(num_sets):
        started = time.time()
        set_seed_list, classes = class_labels(policy, set_seeds(seeds, index), int(net.label_dim))
        chunks = sample_chunks(net, terms, set_seed_list, classes, options, device, int(cfg.chunk_images), bool(cfg.progress), codec)
        metrics = evaluator(chunks)
        sets.append({"seeds": format_seeds(set_seeds(seeds, index)), "images": len(set_seed_list), "metrics": metrics, "seconds": round(time.time() - started, 2)})
        log.info("seed set %d/%d (%s): %s", index + 1, num_sets, sets[-1]["seeds"], metrics)
    names = list(sets[0]["metrics"])
    return {
        "metrics": {m: best_value(m, [s["metrics"][m] for s in sets]) for m in names},
        "mean": {m: float(np.mean([s["metrics"][m] for s in sets])) for m in names},
        "sets": sets,
    }


def write_preview(cfg: DictConfig, net: nn.Module, terms: Sequence[GuidanceTerm], device: torch.device) -> None:
    """The first ``preview_images`` samples of seed set 0, in ``output.formats`` (sampler's writers)."""
    count = int(cfg.preview_images)
    if count <= 0 or not cfg.output.formats:
        return
    seeds, classes = class_labels(plain(cfg.class_labels), parse_seeds(plain(cfg.seeds))[:count], int(net.label_dim))
    codec = latent_codec(net, cfg.get("vae_path"), device)
    samples, _ = next(sample_chunks(net, terms, seeds, classes, sampler_options(cfg), device, len(seeds), codec=codec))
    write_outputs(cfg, samples, seeds, classes, rank_from_env(), toy=int(net.img_resolution) == 0)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (guided as ``cfg.guidance`` says); returns and writes the report."""
    device = resolve_device(str(cfg.device), rank_from_env())
    apply_pair(cfg)
    load = ModelLoader(device)
    net = load(str(cfg.model))
    metrics = plain(cfg.metrics)
    check_model(net, metrics)
    evaluator = Evaluator(metrics, plain(cfg.extractors), device)
    terms = build_guidance(cfg.guidance, load)
    result = evaluate_model(net, terms, cfg, evaluator, device)
    report = {
        "model": str(cfg.model),
        "guide": None if cfg.get("guide") is None else str(cfg.guide),
        "guidance": plain(cfg.guidance),
        "sampler": plain(cfg.sampler),
        "class_labels": plain(cfg.class_labels),
        "seed_sets": int(cfg.seed_sets),
        **result,
        "feature_networks": evaluator.info(),
        "model_cards": load.cards(),
    }
    out = Path(cfg.output.dir)
    write_text_atomic(out / "metrics.json", json_text(report))
    write_text_atomic(out / "evaluate.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_preview(cfg, net, terms, device)
    print(json.dumps({"metrics": result["metrics"], "report": str(out / "metrics.json")}))
    return report


def main() -> None:
    """Console entry point ``autoguide-eval``."""
    run_app("evaluate", run)


if __name__ == "__main__":
    main()
