"""Training time counted in images, translated to optimizer steps and micro-batches.

DESIGN.md, "Time is counted in training images": the user gives the global batch ``B``
(images per optimizer step, all devices and accumulation rounds together), the duration in
Mi (``2**20`` images) and every interval in kimg (1000 images). One optimizer step moves the
image count ``nimg`` from ``k B`` to ``(k + 1) B``; a run of ``T`` images takes
``ceil(T / B)`` steps (like EDM2's ``while nimg < total``). With ``W`` devices and a
per-device micro-batch ``b``, each step accumulates ``B / (W b)`` micro-batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MI = 2**20
"""Images in one Mi (mebi-image)."""
KIMG = 1000
"""Images in one kimg."""


class ConfigError(ValueError):
    """A training setting that cannot be used; the message is one line naming the config key."""


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is split: ``batch_size = world_size * per_device * accumulate``."""

    batch_size: int
    world_size: int
    per_device: int
    accumulate: int


def batch_plan(batch_size: int, world_size: int, per_device: int | None) -> BatchPlan:
    """Split the global ``batch_size`` over ``world_size`` devices.

    ``per_device`` (the largest micro-batch one device takes, ``None`` = no accumulation)
    must divide ``batch_size / world_size``; the quotient is the accumulation count.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"train.batch_size={batch_size!r}: expected a positive integer (images per optimizer step, all devices)")
    if world_size <= 0:
        raise ConfigError(f"trainer.devices: world size {world_size} must be positive")
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the world size {world_size} "
            "(trainer.devices x trainer.num_nodes)"
        )
    local = batch_size // world_size
    if per_device is None:
        per_device = local
    if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device <= 0:
        raise ConfigError(f"train.batch_per_device={per_device!r}: expected a positive integer or null")
    if local % per_device:
        raise ConfigError(
            f"train.batch_per_device={per_device} does not divide the per-device share {local} of "
            f"train.batch_size={batch_size} over {world_size} device(s)"
        )
    return BatchPlan(batch_size, world_size, per_device, local // per_device)


def total_images(duration_mi: float, fraction: float = 1.0) -> int:
    """Training length in images: ``round(duration_mi * fraction * 2**20)``."""
    for key, value in (("train.duration_mi", duration_mi), ("train.duration_fraction", fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{key}={value!r}: expected a positive number")
    return max(1, round(duration_mi * fraction * MI))


def total_steps(total_nimg: int, batch_size: int) -> int:
    """Optimizer steps to reach ``total_nimg`` images: ``ceil(total_nimg / batch_size)``."""
    return -(-int(total_nimg) // int(batch_size))


def interval_images(kimg: float, key: str) -> int:
    """An interval given in kimg as a whole number of images (at least 1)."""
    if isinstance(kimg, bool) or not isinstance(kimg, (int, float)) or not math.isfinite(kimg) or kimg <= 0:
        raise ConfigError(f"{key}={kimg!r}: expected a positive number of kimg")
    return max(1, round(kimg * KIMG))


def crossed(before: int, after: int, every: int) -> bool:
    """Whether the image count passed a multiple of ``every`` going from ``before`` to ``after``
    (``before < k * every <= after`` for some integer ``k``)."""
    return after // every > before // every


class IntervalTrigger:
    """Fires once per optimizer step that crossed a multiple of ``every`` images, and at the
    final step. Call ``start`` with the image count training (re)starts from, then ``due``
    after every micro-batch; calls without a change of the image count never fire."""

    def __init__(self, every: int) -> None:
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
