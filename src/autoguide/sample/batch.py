"""Generate many images in batches: seeds -> per-seed noise -> ``edm_sampler``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.labels import as_one_hot
from autoguide.sample.sampler import edm_sampler
from autoguide.sample.seeds import seed_noise


def sample_shape(net: nn.Module) -> tuple[int, ...]:
    """Shape of one sample: ``(C, R, R)`` for images, ``(C,)`` for 2D/vector data (resolution 0)."""
    channels, resolution = int(net.img_channels), int(net.img_resolution)
    return (channels, resolution, resolution) if resolution > 0 else (channels,)


def generate_images(
    net: nn.Module,
    seeds: Sequence[int],
    labels: torch.Tensor | Sequence[int] | None = None,
    guidance: Sequence[GuidanceTerm] = (),
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **sampler_kwargs,
) -> torch.Tensor:
    """Samples ``[len(seeds), *sample_shape(net)]`` (float32, on the CPU), image ``i`` from seed
    ``seeds[i]`` and class ``labels[i]`` (indices ``[N]``, one-hot ``[N, label_dim]`` or ``None``).

    ``net`` and the guidance models must already be on ``device``. Batches are cut from the
    seed list; since every image draws its randomness from its own seed, the result does not
    depend on ``batch_size``. ``sampler_kwargs`` go to ``edm_sampler`` (``num_steps``,
    ``solver``, ``S_churn``, ``precision``, ...).
    """
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
            noise = seed_noise(batch_seeds, shape, device)
            x = edm_sampler(net, noise, batch_labels, guidance, seeds=batch_seeds, **sampler_kwargs)
            outputs.append(x.cpu())
            bar.update(len(batch_seeds))
    return torch.cat(outputs)
