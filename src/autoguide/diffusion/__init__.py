"""Noise-level distribution, the EDM2 loss, the LR schedule and the sampler's sigma grid."""

from autoguide.diffusion.loss import edm2_loss, loss_weight, sample_sigma
from autoguide.diffusion.schedule import edm_sigma_steps, learning_rate

__all__ = ["edm2_loss", "edm_sigma_steps", "learning_rate", "loss_weight", "sample_sigma"]
