"""Generate many images in batches: seeds -> per-seed noise -> the guided denoiser ->
``edm_sampler``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from autoguide.nets.compile import compile_network
from autoguide.sample.guidance import DegradedInput, GuidanceTerm, OtherNetwork, sample_shape
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.labels import as_one_hot
from autoguide.sample.sampler import edm_sampler
from autoguide.sample.sampler_settings import SamplerSettings
from autoguide.sample.seeds import SeedStreams, seed_noise


def generate_images(
    net: nn.Module,
    seeds: Sequence[int],
    labels: torch.Tensor | Sequence[int] | None = None,
    guidance: Sequence[GuidanceTerm] = (),
    *,
    sampler: SamplerSettings | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    **sampler_fields: Any,
) -> torch.Tensor:
    """Samples ``[len(seeds), *sample_shape(net)]`` (float32, on the CPU), image ``i`` from seed
    ``seeds[i]`` and class ``labels[i]`` (indices ``[N]``, one-hot ``[N, label_dim]`` or ``None``),
    guided by ``guidance``.

    ``sampler``: the ODE settings (default EDM's Heun sampler); keyword arguments name single
    fields of it (``num_steps=8``) on top; with ``sampler.compile`` the networks (main and
    guides) are compiled in place first. ``net`` and the guidance models must already be on
    ``device``; ``precision`` (``fp32`` or ``bf16``) is the networks' autocast. Batches are cut
    from the seed list; since every image draws its randomness from its own seed, the result
    does not depend on ``batch_size``.
    """
    settings = dataclasses.replace(sampler or SamplerSettings(), **sampler_fields)
    if settings.compile:
        if any(isinstance(t.negative(), DegradedInput) for t in guidance):
            raise ValueError(
                "sampler.compile=true cannot run SAG: its negative reads the attention map out of the positive's "
                "forward through a hook with a side effect, which compiled code does not replay; sample SAG uncompiled"
            )
        others = [request.model for t in guidance if isinstance(request := t.negative(), OtherNetwork)]
        for model in dict.fromkeys([net, *others]):
            compile_network(model)
    seeds = [int(s) for s in seeds]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    one_hot = as_one_hot(labels, int(getattr(net, "label_dim", 0)), len(seeds))
    shape = sample_shape(net)
    outputs = []
    with tqdm(total=len(seeds), unit="img", disable=not progress) as bar:
        for start in range(0, len(seeds), batch_size):
            batch_seeds = seeds[start : start + batch_size]
            batch_labels = None if one_hot is None else one_hot[start : start + batch_size].to(device)
            streams = SeedStreams(batch_seeds)
            denoise = GuidedDenoiser(net, guidance, batch_labels, streams, precision)
            x = edm_sampler(denoise, seed_noise(batch_seeds, shape, device), settings, streams)
            outputs.append(x.cpu())
            bar.update(len(batch_seeds))
    return torch.cat(outputs)
