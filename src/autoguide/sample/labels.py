"""Class labels for sampling: one-hot conversion and the CLI's label policies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoguide.sample.seeds import SeedStreams

LABEL_STREAM = "labels"


def model_label_dim(net: nn.Module) -> int:
    """The number of classes a denoiser network is conditioned on (its ``label_dim``; 0:
    unconditional, also for a network that does not say)."""
    return int(getattr(net, "label_dim", 0))


def as_one_hot(labels: torch.Tensor | Sequence[int] | None, label_dim: int, n: int) -> torch.Tensor | None:
    """``labels`` as float one-hot ``[n, label_dim]``: accepts class indices ``[n]`` or one-hot
    ``[n, label_dim]``; ``None`` stays ``None`` (unconditional, or the null label)."""
    if labels is None:
        return None
    if label_dim <= 0:
        raise ValueError("class labels were given, but the model is unconditional (label_dim 0)")
    labels = torch.as_tensor(labels)
    if labels.ndim == 1 and not labels.is_floating_point():
        if len(labels) != n or labels.min() < 0 or labels.max() >= label_dim:
            raise ValueError(f"class indices must be {n} values in [0, {label_dim}), got {labels.tolist()[:8]}...")
        return F.one_hot(labels, label_dim).to(torch.float32)
    if labels.shape != (n, label_dim):
        raise ValueError(f"one-hot labels must have shape [{n}, {label_dim}], got {list(labels.shape)}")
    return labels.to(torch.float32)


def class_labels(
    policy: str | int | Sequence[int], seeds: Sequence[int], label_dim: int
) -> tuple[list[int], list[int] | None]:
    """The images to generate as ``(seeds, classes)`` for a label ``policy``.

    - ``random``: one uniformly random class per seed, drawn from the seed's ``labels`` stream;
    - ``all``: every class for every seed (image ``(seed, class)``, classes outer, seeds inner);
    - an integer: that class for every seed;
    - a list of integers: one class per seed, cycled over the seeds.
    Unconditional models (``label_dim 0``) take ``none`` or ``random`` and give ``classes None``.
    """
    seeds = list(seeds)
    if label_dim <= 0:
        if policy not in ("none", "random"):
            raise ValueError(f"class_labels={policy!r}: the model is unconditional; use class_labels=none")
        return seeds, None
    if policy == "none":
        raise ValueError(
            f"class_labels=none: the model is class-conditional (label_dim {label_dim}); "
            "use random, all, an index or a list"
        )
    if policy == "random":
        return seeds, SeedStreams(seeds).randint(LABEL_STREAM, label_dim).tolist()
    if policy == "all":
        return [s for _ in range(label_dim) for s in seeds], [c for c in range(label_dim) for _ in seeds]
    fixed = [policy] if isinstance(policy, int) else list(policy) if not isinstance(policy, str) else None
    if not fixed or any(not isinstance(c, int) or not 0 <= c < label_dim for c in fixed):
        raise ValueError(
            f"class_labels={policy!r}: expected random, all, none, a class index in [0, {label_dim}) or a list of them"
        )
    return seeds, [fixed[i % len(fixed)] for i in range(len(seeds))]
