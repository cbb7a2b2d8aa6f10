"""A picture of what the model currently generates, every N images and at the end.

The raw network (not an EMA) samples fixed seeds ``0 .. num_images - 1`` with the shared EDM
sampler (``autoguide.sample``: deterministic Heun, ``num_steps`` steps), so successive pictures
differ only by training. Conditional models draw class ``seed mod label_dim``; a grid then
has one column per class when there are at most 16 classes. Image data gives a PNG grid,
2D data (``img_resolution == 0``) a scatter plot. Files: ``<out_dir>/nimg-{nimg:012d}.png``;
only global rank 0 samples and writes; the PNG is also logged to wandb when it is a logger.
Latent data (a dataset with a ``latent_spec``): the samples are decoded to pixels with the VAE
in ``vae_path``; without one the grid shows the first three latent channels (with a note in
the log, once).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from autoguide.core.typed_settings import interval_images
from autoguide.core.units import KIMG
from autoguide.data.sample_files import write_grid, write_scatter
from autoguide.data.vae import LatentCodec, load_latent_codec
from autoguide.nets.energy import EnergyDenoiser
from autoguide.nets.precond import Precond
from autoguide.sample import generate_images
from autoguide.train.plan import IntervalTrigger, image_count

MAX_CLASS_COLUMNS = 16
log = logging.getLogger(__name__)


def sample_labels(num_images: int, label_dim: int) -> list[int] | None:
    """Class ``i mod label_dim`` for image ``i``; ``None`` for an unconditional model."""
    return [i % label_dim for i in range(num_images)] if label_dim else None


class SampleGridCallback(pl.Callback):
    """Write ``num_images`` samples of the current network every ``every_kimg`` kimg and at
    the end of training."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        every_kimg: float,
        num_images: int = 100,
        num_steps: int = 32,
        batch_size: int = 100,
        vae_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("num_images", num_images), ("num_steps", num_steps), ("batch_size", batch_size)):
            if int(value) != value or value < 1:
                raise ValueError(f"callbacks.sample_grid.{key}={value!r}: expected a positive integer")
        self.out_dir = Path(out_dir)
        self.trigger = IntervalTrigger(interval_images(every_kimg, "train.sample_kimg"))
        self.num_images = int(num_images)
        self.num_steps = int(num_steps)
        self.batch_size = int(batch_size)
        self.vae_path = vae_path
        self.latent: dict[str, Any] | None = None  # the data's latent space, read at the start of training
        self._codec: LatentCodec | None = None
        self._noted = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trigger.start(image_count(pl_module).nimg)
        datamodule = getattr(trainer, "datamodule", None)
        self.latent = getattr(getattr(datamodule, "dataset", None), "latent_spec", None)

    def to_pixels(self, samples: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Samples as images: latents decoded with the VAE (or their first three channels)."""
        if self.latent is None:
            return samples
        if self.vae_path is None:
            if not self._noted:
                log.info("sample grids show the first three latent channels; set vae_path=<VAE folder> to decode them")
                self._noted = True
            return samples[:, :3].clamp(-1, 1)
        if self._codec is None:
            self._codec = load_latent_codec({"latent": self.latent}, self.vae_path, device)
            assert self._codec is not None  # a latent space and a VAE folder give a codec
        return self._codec.decode(samples.to(device)).cpu()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        module = image_count(pl_module)
        if self.trigger.due(module.nimg, final=trainer.global_step >= trainer.max_steps) and trainer.is_global_zero:
            path = self.write(module.net, module.nimg, precision="bf16" if "bf16" in str(trainer.precision) else "fp32")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key="samples", images=[str(path)], step=trainer.global_step)

    def write(self, net: Precond | EnergyDenoiser, nimg: int, precision: str = "fp32") -> Path:
        """Sample with ``net`` (temporarily in eval mode) and write the picture for ``nimg``."""
        device = next(net.parameters()).device
        labels = sample_labels(self.num_images, int(net.label_dim))
        was_training = net.training
        net.eval()
        try:
            samples = generate_images(
                net,
                range(self.num_images),
                labels,
                batch_size=self.batch_size,
                device=device,
                num_steps=self.num_steps,
                precision=precision,
            )
        finally:
            net.train(was_training)
        samples = self.to_pixels(samples, device)
        path = self.out_dir / f"nimg-{nimg:012d}.png"
        title = f"{nimg / KIMG:.1f} kimg"
        if int(net.img_resolution) == 0:
            write_scatter(path, samples, labels, title=title)
        else:
            label_dim = int(net.label_dim)
            write_grid(path, samples, cols=label_dim if 0 < label_dim <= MAX_CLASS_COLUMNS else None)
        return path
