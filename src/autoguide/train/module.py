"""``DiffusionModule``: the one LightningModule for every model role.

Main models, autoguidance guides and SIMS-retrained models differ only in configuration
(network preset, duration, data, conditioning). The training step is EDM2's (Karras et al.
2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"):

- loss ``L = lambda(sigma) / exp(u(sigma)) * ||D(y + n, sigma) - y||^2 + u(sigma)`` with
  ``ln sigma ~ N(P_mean, P_std^2)`` (``autoguide.diffusion.edm2_loss``); forced weight
  normalisation happens inside the network's training forward;
- Adam with betas (0.9, 0.99), eps 1e-8 (or any ``torch.optim`` class with its arguments,
  ``optimizer``); before every optimizer step the learning rate is
  set from the image count, ``alpha = alpha_ref / sqrt(max(nimg / (t_ref B), 1)) *
  min(nimg / rampup, 1)`` (``autoguide.diffusion.learning_rate``), and non-finite gradient
  entries are replaced by zero; more than ``train.max_nonfinite_steps`` such steps in a row, or
  non-finite weights, stop the run before any callback writes (``autoguide.train.finite``);
- optional label dropout for classifier-free guidance: each label is replaced by the null
  label (all zeros) with probability ``cond_drop_prob``;
- ``target="exact"`` regresses the data's exact posterior mean ``E[y | y + n]`` instead of the
  sample ``y`` (datasets with a closed-form distribution, i.e. the 2D toy; see
  ``autoguide.diffusion.loss``): the run hands the module that target
  (``autoguide.train.validate.exact_target``).

``nimg`` is the global number of training images after the latest optimizer step; it is
stored in the Lightning checkpoint. Every micro-batch reseeds the global RNG from
``(seed, rank, images consumed before it)``, so a resumed run draws the same noise levels,
noise, dropout masks and label drops as an uninterrupted one.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch

from autoguide.core.typed_settings import to_dict
from autoguide.core.units import KIMG
from autoguide.diffusion import edm2_loss
from autoguide.diffusion.loss import ExactTarget
from autoguide.nets import build_network, compile_network, config_dict
from autoguide.train.finite import FiniteGuard, max_norm
from autoguide.train.gradients import FlatGradients
from autoguide.train.recipe import RunSettings

CHECKPOINT_KEY = "autoguide_train"
log = logging.getLogger(__name__)


def step_seed(seed: int, rank: int, nimg: int) -> int:
    """A 63-bit seed that is a well-mixed function of ``(seed, rank, nimg)``
    (numpy ``SeedSequence``), for the micro-batch starting at global image ``nimg``."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(nimg)]).generate_state(1, np.uint64)[0] >> 1)


class DiffusionModule(L.LightningModule):
    """Trains ``self.net`` (built from ``run.net``) with the EDM2 recipe of ``run.train``
    (``autoguide.train.recipe.TrainSettings``: global batch, learning-rate schedule, noise
    levels, label dropout, target, loss weighting, optimizer). ``run.seed`` seeds the network
    initialisation and, with rank and image count, every step. ``exact_target``: the data's
    ``E[y | y + n]`` for ``train.target=exact`` (``autoguide.train.validate.exact_target``);
    ``None`` regresses the sample. ``batch_size`` is the global batch (images per optimizer
    step, all devices)."""

    def __init__(self, run: RunSettings, exact_target: ExactTarget | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"net": config_dict(run.net), "train": to_dict(run.train), "seed": run.seed})
        self.settings = run.train
        self.batch_size = run.train.batch_size
        self._exact_target = exact_target
        self.seed = run.seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = build_network(run.net)
        self.nimg = 0
        self._step_images = 0
        self.finite_guard = FiniteGuard(run.train.max_nonfinite_steps)
        self._loss_max: torch.Tensor | None = None  # max |loss| over the micro-batches of this step
        self._grad_max: torch.Tensor | None = None  # max |gradient| of this step, before zeroing

    def learning_rate(self) -> float:
        """The learning rate of the next optimizer step (from the current ``nimg``)."""
        return self.settings.learning_rate(self.nimg)

    def _conditioning(self, labels: torch.Tensor) -> torch.Tensor | None:
        """One-hot labels for the network: ``None`` when unconditional, with label dropout."""
        if not self.net.label_dim:
            return None
        if self.settings.cond_drop_prob > 0:
            keep = torch.rand(labels.shape[0], device=labels.device) >= self.settings.cond_drop_prob
            labels = labels * keep.unsqueeze(1).to(labels.dtype)
        return labels

    def on_fit_start(self) -> None:
        """Compile the network if ``train.compile``."""
        if self.settings.compile:  # after the callbacks' on_fit_start: the EMA copies stay plain modules
            compile_network(self.net)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        torch.manual_seed(step_seed(self.seed, self.global_rank, self.nimg + self._step_images))
        self._step_images += images.shape[0] * self.trainer.world_size
        loss = edm2_loss(
            self.net,
            images,
            self._conditioning(labels),
            self.settings.P_mean,
            self.settings.P_std,
            exact_target=self._exact_target,
            weighting=self.settings.loss_weighting,
        )
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=images.shape[0])
        size = loss.detach().abs()
        self._loss_max = size if self._loss_max is None else torch.maximum(self._loss_max, size)
        return loss

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        self.gradients.zero_()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        lr = self.learning_rate()
        for group in optimizer.param_groups:
            group["lr"] = lr
        self._grad_max = self.gradients.max_norm()
        self.gradients.clean_()
        self.log("train/lr", lr, on_step=True, prog_bar=True)
        self.log("train/kimg", self.nimg / KIMG, on_step=True)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self._check_finite()
        if self._step_images != self.batch_size:
            raise RuntimeError(
                f"an optimizer step consumed {self._step_images} images but train.batch_size is "
                f"{self.batch_size}; the data batch size or gradient accumulation does not match"
            )
        self.nimg += self._step_images
        self._step_images = 0

    def _check_finite(self) -> None:
        """After an optimizer step: count a non-finite loss or gradient, stop on non-finite
        weights or too many such steps in a row (``FiniteGuard``). One host sync; under DDP the
        flags are combined over the ranks (one small all-reduce), so all ranks stop together."""
        assert self._loss_max is not None and self._grad_max is not None
        weights = max_norm(self.net.parameters())
        maxima = torch.stack([t.float() for t in (self._loss_max, self._grad_max, weights)])
        bad = (~maxima.isfinite()).float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        loss_ok, grads_ok, weights_ok = (bad == 0).tolist()
        self._loss_max = self._grad_max = None
        step = self.nimg // self.batch_size + 1
        warning = self.finite_guard.check(step, self.nimg, loss_ok, grads_ok, weights_ok)
        if warning and self.trainer.is_global_zero:
            log.warning(warning)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer, over gradients that live in one flat buffer (``FlatGradients``)."""
        self.gradients = FlatGradients(self.net.parameters())
        optimizer_cls, kwargs = self.settings.optimizer.resolve(self.gradients.buffer.device)
        return optimizer_cls(self.net.parameters(), lr=self.settings.lr_ref, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"nimg": self.nimg, "nonfinite_in_a_row": self.finite_guard.in_a_row}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise ValueError(f"checkpoint has no '{CHECKPOINT_KEY}' entry: not written by autoguide training")
        self.nimg = int(checkpoint[CHECKPOINT_KEY]["nimg"])
        self.finite_guard.in_a_row = int(checkpoint[CHECKPOINT_KEY].get("nonfinite_in_a_row", 0))
        self._step_images = 0
