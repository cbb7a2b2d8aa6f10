"""The ``train`` config node as typed settings: the EDM2 recipe of one run, checked once.

EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models"): the loss draws ``ln sigma ~ N(P_mean, P_std^2)``; Adam with betas (0.9, 0.99) and
eps 1e-8; the learning rate ``alpha_ref / sqrt(max(nimg / (t_ref B), 1))`` with a linear
warm-up (``autoguide.diffusion.learning_rate``). Every length and interval is counted in images
(``autoguide.core.units``): the duration in Mi, intervals in kimg; ``batch_size`` is the global
batch (images per optimizer step, all devices and accumulation rounds), ``micro_batch`` the
images one device takes per forward pass (``autoguide.train.plan``).

The recipe values (batch, duration, learning rate, noise levels, intervals) have no default:
each experiment states its own. The rest defaults to neutral values: no accumulation, the full
duration, no label dropout, the sample itself as the target, EDM2's learned loss weighting and
EDM2's Adam.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from autoguide.core.typed_settings import ConfigError, choice, interval_images, number, positive_int
from autoguide.core.units import MI
from autoguide.diffusion.loss import LOSS_WEIGHTINGS
from autoguide.diffusion.schedule import learning_rate
from autoguide.nets.architectures import NetworkConfig
from autoguide.train.plan import BatchPlan, batch_plan

EDM2_ADAM_KWARGS = {"betas": (0.9, 0.99), "eps": 1e-8}
"""Adam's arguments in EDM2; the defaults of ``Adam`` and ``AdamW`` here."""
TARGETS = ("data", "exact")
"""Loss targets: the training sample, or the data's exact posterior mean (closed-form data only)."""
INTERVALS = ("log_kimg", "checkpoint_kimg", "sample_kimg", "snapshot_kimg")


@dataclass(frozen=True, kw_only=True)
class OptimizerSettings:
    """Any ``torch.optim`` class by ``name``; ``kwargs`` are its arguments, over EDM2's betas
    and eps for Adam and AdamW (torch's defaults for other classes). The learning rate is not
    an argument: the schedule sets it before every step."""

    name: str = "Adam"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resolve()

    def resolve(
        self, device: torch.device | None = None
    ) -> tuple[Callable[..., torch.optim.Optimizer], dict[str, Any]]:
        """``(optimizer class, its keyword arguments)``; ``ConfigError`` naming the bad key.
        On a CPU or CUDA ``device`` Adam and AdamW run their fused kernel (one pass over every
        parameter) unless ``kwargs`` choose ``fused`` or ``foreach`` themselves."""
        cls = getattr(torch.optim, str(self.name), None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
            raise ConfigError(
                f"train.optimizer.name={self.name!r}: "
                "expected a torch.optim optimizer class such as 'Adam', 'AdamW' or 'SGD'"
            )
        if "lr" in self.kwargs:
            raise ConfigError(
                "train.optimizer.kwargs.lr: the learning rate comes from train.lr_ref and its schedule; remove it"
            )
        adam = self.name in ("Adam", "AdamW")
        kwargs = {**(EDM2_ADAM_KWARGS if adam else {}), **self.kwargs}
        if adam and device is not None and device.type in ("cpu", "cuda") and not {"fused", "foreach"} & set(kwargs):
            kwargs["fused"] = True
        try:
            inspect.signature(cls).bind(None, **kwargs)
        except TypeError as error:
            raise ConfigError(
                f"train.optimizer.kwargs {sorted(self.kwargs)} do not fit torch.optim.{self.name}: {error}"
            ) from None
        return cls, kwargs


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """One training run's recipe (the ``train`` config node); see the module docstring.

    ``batch_size``: images per optimizer step, all devices and accumulation rounds;
    ``micro_batch``: the largest batch one device takes per forward pass (None: the device's
    whole share of ``batch_size``, no accumulation);
    ``duration_mi`` x ``duration_fraction``: the length (a guide: a fraction of its main run);
    ``lr_ref``, ``lr_ref_batches`` (t_ref in steps; 0: no decay), ``lr_rampup_mi`` (0: none);
    ``P_mean``, ``P_std``: the loss's noise levels; ``cond_drop_prob``: label dropout to the
    null label (for CFG); ``target``: ``data`` or ``exact`` (E[x0 | x], toy2d only);
    ``loss_weighting``: ``learned`` (EDM2) or ``edm`` (lambda alone); the ``*_kimg`` intervals
    of metrics, checkpoints, sample grids and post-hoc EMA snapshots; ``compile``: run the
    network's forward through ``torch.compile`` (``autoguide.nets.compile_network``; off by
    default: on a CPU the compilation takes longer than a short run gains);
    ``max_nonfinite_steps``: optimizer steps in a row with a non-finite loss or gradient that a
    run tolerates (their gradients zeroed, as EDM2 does) before it stops (``autoguide.train.finite``).
    """

    batch_size: int
    micro_batch: int | None = None
    duration_mi: float
    duration_fraction: float = 1.0
    lr_ref: float
    lr_ref_batches: float
    lr_rampup_mi: float = 0.0
    P_mean: float
    P_std: float
    cond_drop_prob: float = 0.0
    target: str = "data"
    loss_weighting: str = "learned"
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    log_kimg: float
    checkpoint_kimg: float
    sample_kimg: float
    snapshot_kimg: float
    compile: bool = False
    max_nonfinite_steps: int = 4

    def __post_init__(self) -> None:
        positive_int(self.batch_size, "train.batch_size", "a positive integer (images per optimizer step, all devices)")
        if self.micro_batch is not None:
            positive_int(self.micro_batch, "train.micro_batch", "a positive integer or null (images per device)")
        for key in ("duration_mi", "duration_fraction"):
            number(getattr(self, key), f"train.{key}", 0, low_open=True, expected="a positive number")
        number(self.lr_ref, "train.lr_ref", 0, low_open=True)
        number(self.lr_ref_batches, "train.lr_ref_batches", 0)
        number(self.lr_rampup_mi, "train.lr_rampup_mi", 0)
        number(self.P_mean, "train.P_mean")
        number(self.P_std, "train.P_std", 0, low_open=True)
        number(self.cond_drop_prob, "train.cond_drop_prob", 0, 1, high_open=True)
        choice(self.target, "train.target", TARGETS)
        choice(self.loss_weighting, "train.loss_weighting", LOSS_WEIGHTINGS)
        for key in INTERVALS:
            self.interval_images(key)
        patience = self.max_nonfinite_steps
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ConfigError(
                f"train.max_nonfinite_steps={patience!r}: expected an integer >= 0 (0 stops at the first)"
            )

    @property
    def total_nimg(self) -> int:
        """Training length in images: ``round(duration_mi * duration_fraction * 2**20)``."""
        return max(1, round(self.duration_mi * self.duration_fraction * MI))

    @property
    def total_steps(self) -> int:
        """Optimizer steps to reach ``total_nimg``: ``ceil(total_nimg / batch_size)``, as EDM2's
        ``while nimg < total``."""
        return -(-self.total_nimg // self.batch_size)

    def interval_images(self, key: str) -> int:
        """The interval ``train.<key>`` (in kimg) as a whole number of images, at least 1."""
        return interval_images(getattr(self, key), f"train.{key}")

    def learning_rate(self, nimg: int) -> float:
        """The EDM2 learning rate after ``nimg`` training images."""
        return learning_rate(nimg, self.lr_ref, self.lr_ref_batches, self.batch_size, self.lr_rampup_mi * MI)

    def batch_plan(self, world_size: int) -> BatchPlan:
        """How the global batch splits over ``world_size`` devices (``autoguide.train.plan``)."""
        return batch_plan(self.batch_size, world_size, self.micro_batch)


@dataclass(frozen=True)
class RunSettings:
    """A training run's checked settings: the network, the recipe and the seed. The recipe's
    label dropout needs labels to drop: ``cond_drop_prob > 0`` only with ``net.label_dim > 0``."""

    net: NetworkConfig
    train: TrainSettings
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r}: expected an integer >= 0")
        if self.train.cond_drop_prob > 0 and not self.net.label_dim:
            raise ConfigError(
                f"train.cond_drop_prob={self.train.cond_drop_prob} needs a conditional network, but net.label_dim=0"
            )
