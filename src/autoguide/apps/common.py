"""What the sampling apps (generate, eval, sweep, sims-compare) share, on their typed configs
(``autoguide.apps.sampling_configs``): the SIMS pair option and the evaluation they describe."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import torch

from autoguide.apps.sampling_configs import EvalConfig, GenerateConfig
from autoguide.apps.sims_pair import pair_sampling
from autoguide.eval.evaluate import Evaluation

G = TypeVar("G", bound=GenerateConfig)


def with_pair(settings: G) -> G:
    """``pair=<pair.json>``: ``settings`` with ``model`` and ``guidance`` set to the pair's base
    and SIMS term (``autoguide.apps.sims_pair``); unchanged without ``pair``."""
    if settings.pair is None:
        return settings
    model, guidance = pair_sampling(settings.pair, settings.model, settings.guidance_settings)
    return dataclasses.replace(settings, model=model, guidance=guidance)


def evaluation(settings: EvalConfig, device: torch.device) -> Evaluation:
    """The evaluation an eval-derived config describes: seeds and seed sets, sampling, metrics."""
    return Evaluation(
        settings.plan(),
        settings.generation(),
        settings.metrics_settings,
        settings.extractors,
        device,
        settings.vae_path,
    )
