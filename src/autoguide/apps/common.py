"""Config nodes of the sampling apps (generate, eval, sweep, sims-compare) as library settings:
every app reads the shared keys the same way."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from autoguide.apps.sims_pair import pair_sampling
from autoguide.core.typed_settings import ConfigError, from_mapping
from autoguide.data.sample_files import OutputSettings
from autoguide.eval.evaluate import EvalPlan, Evaluation
from autoguide.sample.sampler_settings import GenerationSettings, SamplerSettings
from autoguide.sample.seeds import parse_seeds


def plain(value: Any) -> Any:
    """An OmegaConf list/dict as plain Python (interpolations resolved); anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def apply_pair(cfg: DictConfig) -> None:
    """``pair=<pair.json>``: set ``model`` and ``guidance`` to the pair's base and SIMS term."""
    if cfg.get("pair") is None:
        return
    model = None if OmegaConf.is_missing(cfg, "model") else cfg.model
    model, guidance = pair_sampling(str(cfg.pair), model, plain(cfg.guidance))
    with open_dict(cfg):
        cfg.model = model
        cfg.guidance = OmegaConf.create(guidance)


def generation_settings(cfg: DictConfig) -> GenerationSettings:
    """``sampler``, ``batch_size``, ``precision`` and ``progress`` of an app config."""
    sampler = from_mapping(SamplerSettings, plain(cfg.sampler), "sampler")
    return GenerationSettings(
        sampler=sampler, batch_size=cfg.batch_size, precision=str(cfg.precision), progress=bool(cfg.progress)
    )


def output_settings(cfg: DictConfig) -> OutputSettings:
    """The ``output`` node."""
    return from_mapping(OutputSettings, plain(cfg.output), "output")


def evaluation(cfg: DictConfig, device: torch.device) -> Evaluation:
    """The evaluation an eval-derived config describes: seeds and seed sets, sampling, metrics."""
    try:
        seeds = parse_seeds(plain(cfg.seeds))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    plan = EvalPlan(
        seeds=seeds, class_labels=plain(cfg.class_labels), seed_sets=cfg.seed_sets, chunk_images=cfg.chunk_images
    )
    return Evaluation(
        plan, generation_settings(cfg), plain(cfg.metrics), plain(cfg.extractors), device, cfg.get("vae_path")
    )
