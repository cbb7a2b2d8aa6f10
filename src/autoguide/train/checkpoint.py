"""Training checkpoints: atomic files, saved every N images and at the end, found for resume.

Files are ``<run>/checkpoints/nimg-{nimg:012d}.ckpt`` (Lightning checkpoints: weights,
optimizer, loop counters, callback states, ``nimg``). A checkpoint is written to a temporary
name in the same folder, flushed to disk and renamed, so a run killed at any moment leaves
either the previous newest checkpoint or the complete new one. Checkpoints are read with
``torch.load(weights_only=True)``: they hold tensors and plain data only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from autoguide.io import atomic_path
from autoguide.settings import interval_images
from autoguide.train.plan import IntervalTrigger
from autoguide.train.preemption import STOP_SIGNALS, Preempted, SignalFlag, parse_signals, requeue_slurm_job

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^nimg-(\d{12})\.ckpt$")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The checkpoint folder of a run folder."""
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | os.PathLike, nimg: int) -> Path:
    """Where the checkpoint at image count ``nimg`` of a run is stored."""
    return checkpoint_dir(run_dir) / f"nimg-{int(nimg):012d}.ckpt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(nimg, path)`` of every checkpoint of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, fsync, rename; loading is
    restricted to tensors and plain data (``weights_only=True``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


class ImageCheckpoint(Checkpoint):
    """Save a checkpoint whenever the image count crosses a multiple of ``every_kimg * 1000``,
    after the last optimizer step, and on a preemption signal; keep the newest ``keep`` (0 = all).

    Being a ``Checkpoint`` callback, Lightning runs it after every other callback, so the
    saved callback states (e.g. the EMAs) already include the step just taken.

    Preemption (``autoguide.train.preemption``): from ``setup`` to ``teardown`` the signals
    ``preempt_signals`` only set a flag. At the end of the next optimizer step the ranks agree
    (one boolean all-reduce per step) and all save a checkpoint; then global rank 0 requeues the
    SLURM job (when ``requeue``, inside a SLURM job, and the signal was not SIGTERM, a request to
    stop) and every rank raises ``Preempted`` (exit status 3).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        every_kimg: float,
        keep: int = 2,
        preempt_signals: Sequence[str] = ("SIGUSR1", "SIGUSR2", "SIGTERM"),
        requeue: bool = True,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.trigger = IntervalTrigger(interval_images(every_kimg, "train.checkpoint_kimg"))
        if int(keep) != keep or keep < 0:
            raise ValueError(f"callbacks.checkpoint.keep={keep!r}: expected an integer >= 0 (0 keeps all)")
        self.keep = int(keep)
        self.flag = SignalFlag(parse_signals(preempt_signals))
        self.requeue = bool(requeue)
        self._step_nimg = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.flag.install()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.flag.restore()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flag.reinstall()  # over Lightning's SIGTERM handler, set after setup
        self.trigger.start(pl_module.nimg)
        self._step_nimg = int(pl_module.nimg)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        nimg = int(pl_module.nimg)
        if nimg == self._step_nimg:  # inside gradient accumulation: no step boundary
            return
        self._step_nimg = nimg
        stop = trainer.strategy.reduce_boolean_decision(self.flag.received is not None, all=False)
        if self.trigger.due(nimg, final=trainer.global_step >= trainer.max_steps) or stop:
            path = self.save(trainer, nimg)
        if stop:
            requeue = self.requeue and trainer.is_global_zero and self.flag.received not in STOP_SIGNALS
            requeued = requeue_slurm_job() if requeue else None
            if trainer.is_global_zero:
                log.warning("preempted at nimg %d: saved %s; %s", nimg, path,
                            f"requeued SLURM job {requeued}" if requeued else "not requeued")
            raise Preempted(nimg, str(path), requeued)

    def save(self, trainer: pl.Trainer, nimg: int) -> Path:
        """Write the checkpoint for ``nimg`` (all ranks must call); then delete checkpoints
        beyond ``nimg`` (an abandoned continuation, when a run was resumed from an older
        checkpoint) and all but the newest ``keep``."""
        path = checkpoint_path(self.run_dir, nimg)
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            existing = list_checkpoints(self.run_dir)
            stale = [p for n, p in existing if n > nimg]
            done = [p for n, p in existing if n <= nimg]
            for old in stale + (done[: -self.keep] if self.keep else []):
                old.unlink(missing_ok=True)
        return path
