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
  entries are replaced by zero;
- optional label dropout for classifier-free guidance: each label is replaced by the null
  label (all zeros) with probability ``cond_drop_prob``;
- ``target="exact"`` regresses the data's exact posterior mean ``E[y | y + n]`` instead of the
  sample ``y`` (datasets with a closed-form distribution, i.e. the 2D toy; see
  ``autoguide.diffusion.loss``).

``nimg`` is the global number of training images after the latest optimizer step; it is
stored in the Lightning checkpoint. Every micro-batch reseeds the global RNG from
``(seed, rank, images consumed before it)``, so a resumed run draws the same noise levels,
noise, dropout masks and label drops as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from autoguide.diffusion import edm2_loss, learning_rate
from autoguide.diffusion.loss import LOSS_WEIGHTINGS, ExactTarget
from autoguide.nets import build_network
from autoguide.train.optim import TARGETS, resolve_optimizer
from autoguide.train.plan import MI

CHECKPOINT_KEY = "autoguide_train"
def step_seed(seed: int, rank: int, nimg: int) -> int:
    """A 63-bit seed that is a well-mixed function of ``(seed, rank, nimg)``
    (numpy ``SeedSequence``), for the micro-batch starting at global image ``nimg``."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(nimg)]).generate_state(1, np.uint64)[0] >> 1)


class DiffusionModule(L.LightningModule):
    """Trains ``self.net`` (built from the network config ``net``) with the EDM2 recipe.

    Args:
        net: network config for ``autoguide.nets.build_network``.
        batch_size: global batch in images per optimizer step (all devices, all
            accumulation rounds); ``nimg`` grows by this much per step.
        lr_ref: reference learning rate ``alpha_ref``.
        lr_ref_batches: ``t_ref`` in optimizer steps of ``batch_size`` images (0: no decay).
        lr_rampup_mi: linear warm-up length in Mi images (0: none).
        P_mean, P_std: log-normal noise-level distribution of the loss.
        cond_drop_prob: probability of training a sample with the null label.
        target: ``data`` (regress the training sample) or ``exact`` (regress the exact
            ``E[y | y + n]`` from the datamodule's dataset's ``exact_denoiser``).
        loss_weighting: ``learned`` (EDM2's uncertainty-weighted loss) or ``edm`` (fixed lambda).
        optimizer: ``{"name": <torch.optim class>, "kwargs": {...} or None}``
            (``resolve_optimizer``); default EDM2's Adam.
        seed: seeds the network initialisation and, with rank and image count, every step.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        batch_size: int,
        lr_ref: float,
        lr_ref_batches: float,
        lr_rampup_mi: float,
        P_mean: float,
        P_std: float,
        cond_drop_prob: float = 0.0,
        target: str = "data",
        loss_weighting: str = "learned",
        optimizer: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = int(batch_size)
        self.lr_ref = float(lr_ref)
        self.lr_ref_batches = float(lr_ref_batches)
        self.rampup_img = float(lr_rampup_mi) * MI
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.cond_drop_prob = float(cond_drop_prob)
        if target not in TARGETS:
            raise ValueError(f"target={target!r}: expected one of {TARGETS}")
        self.target = target
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting={loss_weighting!r}: expected one of {LOSS_WEIGHTINGS}")
        self.loss_weighting = loss_weighting
        self._exact_target: ExactTarget | None = None  # set by on_fit_start for target="exact"
        self.optimizer_cls, self.optimizer_kwargs = resolve_optimizer(optimizer)
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = build_network(dict(net))
        if self.cond_drop_prob and not self.net.label_dim:
            raise ValueError(f"cond_drop_prob={cond_drop_prob} needs a conditional network (label_dim > 0)")
        self.nimg = 0
        self._step_images = 0

    def learning_rate(self) -> float:
        """The learning rate of the next optimizer step (from the current ``nimg``)."""
        return learning_rate(self.nimg, self.lr_ref, self.lr_ref_batches, self.batch_size, self.rampup_img)

    def _conditioning(self, labels: torch.Tensor) -> torch.Tensor | None:
        """One-hot labels for the network: ``None`` when unconditional, with label dropout."""
        if not self.net.label_dim:
            return None
        if self.cond_drop_prob > 0:
            keep = torch.rand(labels.shape[0], device=labels.device) >= self.cond_drop_prob
            labels = labels * keep.unsqueeze(1).to(labels.dtype)
        return labels

    def on_fit_start(self) -> None:
        """Look up the regression target once: the datamodule's dataset's ``exact_denoiser``
        when ``target="exact"`` (else it stays ``None``: the sample itself)."""
        if self.target == "exact":
            dataset = self.trainer.datamodule.dataset
            if not hasattr(dataset, "exact_denoiser"):
                raise ValueError(f"target='exact' needs a dataset with an exact denoiser (toy2d); {type(dataset).__name__} has none")
            self._exact_target = dataset.exact_denoiser

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        torch.manual_seed(step_seed(self.seed, self.global_rank, self.nimg + self._step_images))
        self._step_images += images.shape[0] * self.trainer.world_size
        loss = edm2_loss(
            self.net, images, self._conditioning(labels), self.P_mean, self.P_std, exact_target=self._exact_target,
            weighting=self.loss_weighting,
        )
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        lr = self.learning_rate()
        for group in optimizer.param_groups:
            group["lr"] = lr
        for param in self.net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0.0, posinf=0.0, neginf=0.0, out=param.grad)
        self.log("train/lr", lr, on_step=True, prog_bar=True)
        self.log("train/kimg", self.nimg / 1000, on_step=True)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self._step_images != self.batch_size:
            raise RuntimeError(
                f"an optimizer step consumed {self._step_images} images but train.batch_size is "
                f"{self.batch_size}; the data batch size or gradient accumulation does not match"
            )
        self.nimg += self._step_images
        self._step_images = 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_cls(self.net.parameters(), lr=self.lr_ref, **self.optimizer_kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"nimg": self.nimg}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise ValueError(f"checkpoint has no '{CHECKPOINT_KEY}' entry: not written by autoguide training")
        self.nimg = int(checkpoint[CHECKPOINT_KEY]["nimg"])
        self._step_images = 0
