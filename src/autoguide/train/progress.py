"""A console progress bar counted in kimg (training images / 1000), not epochs or batches."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm

from autoguide.core.units import KIMG
from autoguide.train.plan import image_count


class ImageProgressBar(ProgressBar):
    """``[####    ] 12.3/40.0 kimg [elapsed<remaining, loss=..., lr=...]`` on global rank 0,
    updated after every optimizer step (redrawn at most every 0.5 s on a terminal, every
    minute into a log file); total = optimizer steps x global batch."""

    BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}{postfix}]"

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar: tqdm | None = None
        self._postfix_time = -float("inf")

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        total = trainer.max_steps * image_count(pl_module).batch_size / KIMG
        self._bar = tqdm(
            total=total,
            initial=image_count(pl_module).nimg / KIMG,
            desc="train ",
            bar_format=self.BAR_FORMAT,
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
            mininterval=0.5 if sys.stderr.isatty() else 60.0,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._bar is None:
            return
        kimg = image_count(pl_module).nimg / KIMG
        if kimg == self._bar.n:
            return
        now = time.monotonic()
        if now - self._postfix_time >= self._bar.mininterval:  # reading the loss waits for the device: not every step
            self._postfix_time = now
            self._set_postfix(self._bar, trainer, pl_module)
        self._bar.update(kimg - self._bar.n)

    def _set_postfix(self, bar: tqdm, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Loss and learning rate of the latest step (the first step's rate is 0 with a ramp-up, as in EDM2)."""
        metrics = self.get_metrics(trainer, pl_module)
        shown = {
            k.split("/")[-1]: f"{float(v):.4g}"
            for k, v in metrics.items()
            if k in ("train/loss", "train/lr") and isinstance(v, (int, float))
        }
        bar.set_postfix(shown, refresh=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._set_postfix(self._bar, trainer, pl_module)  # the last line shows the last step's values
            self._bar.close()
            self._bar = None
