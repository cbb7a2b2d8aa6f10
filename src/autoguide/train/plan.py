"""Training time counted in images, translated to optimizer steps and micro-batches.

docs/design.md, "Conventions": the user gives the global batch ``B`` (images per optimizer
step, all devices and accumulation rounds together: ``batch_size``), the duration in Mi and
every interval in kimg (``autoguide.core.units``). One optimizer step moves the image count
``nimg`` from ``k B`` to ``(k + 1) B``; a run of ``T`` images takes ``ceil(T / B)`` steps. With
``W`` devices and a micro-batch ``b`` (``micro_batch``: images one device takes per forward
pass), each step accumulates ``B / (W b)`` micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

from autoguide.core.typed_settings import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split: ``batch_size = world_size * micro_batch * accumulate``
    (``batch_size``: images per optimizer step, all devices; ``micro_batch``: images per device
    and forward pass)."""

    batch_size: int
    world_size: int
    micro_batch: int
    accumulate: int


def batch_plan(batch_size: int, world_size: int, micro_batch: int | None) -> BatchPlan:
    """Split the global ``batch_size`` over ``world_size`` devices.

    ``micro_batch`` (the largest batch one device takes per forward pass, ``None`` = the
    device's whole share, no accumulation) must divide ``batch_size / world_size``; the quotient
    is the accumulation count.
    """
    if world_size <= 0:
        raise ConfigError(f"trainer.devices: world size {world_size} must be positive")
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the world size {world_size} "
            "(trainer.devices x trainer.num_nodes)"
        )
    device_share = batch_size // world_size
    micro_batch = device_share if micro_batch is None else micro_batch
    if device_share % micro_batch:
        raise ConfigError(
            f"train.micro_batch={micro_batch} does not divide the per-device share {device_share} of "
            f"train.batch_size={batch_size} over {world_size} device(s)"
        )
    return BatchPlan(batch_size, world_size, micro_batch, device_share // micro_batch)


class ImageCount(Protocol):
    """What the callbacks read from the training module (``autoguide.train.module.DiffusionModule``):
    the global image count ``nimg``, the global ``batch_size`` and the network ``net``."""

    nimg: int
    batch_size: int
    net: Any


def image_count(module: object) -> ImageCount:
    """``module`` (a Lightning module, whose attributes Lightning types as tensors or modules) as
    the training module whose image count it holds."""
    return cast(ImageCount, module)


def crossed(before: int, after: int, every: int) -> bool:
    """Whether the image count passed a multiple of ``every`` going from ``before`` to ``after``
    (``before < k * every <= after`` for some integer ``k``)."""
    return after // every > before // every


class IntervalTrigger:
    """Fires once per optimizer step that crossed a multiple of ``every`` images, and at the
    final step. Call ``start`` with the image count training (re)starts from, then ``due``
    after every micro-batch; calls without a change of the image count never fire."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"interval must be at least 1 image, got {every}")
        self.every = int(every)
        self.last = 0

    def start(self, nimg: int) -> None:
        self.last = int(nimg)

    def due(self, nimg: int, final: bool) -> bool:
        nimg = int(nimg)
        if nimg == self.last:
            return False
        fire = final or crossed(self.last, nimg, self.every)
        self.last = nimg
        return fire
