"""Training checkpoints: atomic files, saved every N images and at the end, found for resume.

Files are ``<run>/checkpoints/nimg-{nimg:012d}.ckpt`` (Lightning checkpoints: weights,
optimizer, loop counters, callback states, ``nimg``). A checkpoint is written to a temporary
name in the same folder, flushed to disk and renamed, so a run killed at any moment leaves
either the previous newest checkpoint or the complete new one. Checkpoints are read with
``torch.load(weights_only=True)``: they hold tensors and plain data only.

Integrity: each checkpoint has a sidecar ``nimg-{nimg:012d}.ckpt.sha256`` (``sha256sum``
format, so ``sha256sum -c`` checks it too) with the SHA-256 of its bytes, hashed from the page
cache while ``fsync`` sends them to the disk, and put in place before the checkpoint itself.
Reading verifies it; ``resume=auto`` takes the newest checkpoint that verifies, with one warning
naming each newer one that does not (``newest_intact_checkpoint``). A checkpoint holding
non-finite tensors is never written.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from autoguide.core.typed_settings import ConfigError, interval_images
from autoguide.io import atomic_path, write_text_atomic
from autoguide.io.digest import read_sha256
from autoguide.io.integrity import IntegrityError, check_finite, tensors_in
from autoguide.runtime.preemption import STOP_SIGNALS, Preempted, SignalFlag, parse_signals, requeue_slurm_job
from autoguide.train.plan import IntervalTrigger, image_count

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
SIDECAR_SUFFIX = ".sha256"
_NAME = re.compile(r"^nimg-(\d{12})\.ckpt$")
_SIDECAR = re.compile(r"^([0-9a-f]{64})  (\S+)$")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from (unreadable, or its bytes differ from its
    SHA-256 sidecar); the message is one line naming the file."""


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


def sidecar_path(path: str | os.PathLike) -> Path:
    """The SHA-256 sidecar of checkpoint ``path``: ``<path>.sha256``."""
    return Path(f"{path}{SIDECAR_SUFFIX}")


class _ErrorKeepingWriter:
    """A binary file that keeps the ``OSError`` of a failed write (``torch.save`` reports it as a
    bare ``RuntimeError``, e.g. ``unexpected pos`` for a full disk)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def verify_checkpoint(path: str | os.PathLike) -> None:
    """``IntegrityError`` naming the file if checkpoint ``path`` is missing or its bytes differ
    from its sidecar's SHA-256. A checkpoint without a sidecar (written before checkpoints had
    one) is not verified: a warning says so."""
    path = Path(path)
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: no such checkpoint file")
    if not sidecar.is_file():
        log.warning("%s has no SHA-256 sidecar (%s); it is not verified", path, sidecar.name)
        return
    match = _SIDECAR.match(sidecar.read_text(errors="replace").strip())
    if match is None or match.group(2) != path.name:
        raise IntegrityError(f"{sidecar}: not a SHA-256 line for {path.name} ('<64 hex digits>  {path.name}')")
    if read_sha256(path) != match.group(1):
        raise IntegrityError(
            f"{path}: SHA-256 differs from {sidecar.name} ({path.stat().st_size} bytes): the checkpoint was "
            "truncated or corrupted after it was written"
        )


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run that verifies (``verify_checkpoint``), ``None`` if the
    run has none. Each newer one that fails is named in one warning; ``CheckpointError``
    naming them when none verifies."""
    bad = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except IntegrityError as error:
            bad.append(str(error))
            continue
        for reason in bad:
            log.warning("%s; resuming from the older %s instead", reason, path.name)
        return path
    if bad:
        raise CheckpointError(
            f"resume=auto: no intact checkpoint in {checkpoint_dir(run_dir)}: {'; '.join(bad)}; "
            "restore one, or delete the folder's checkpoints to start over"
        )
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, hashed while written, fsync, the
    SHA-256 sidecar, rename; non-finite tensors are refused before anything is written. Loading
    verifies the sidecar and is restricted to tensors and plain data (``weights_only=True``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        check_finite(tensors_in(checkpoint), str(path))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                writer = _ErrorKeepingWriter(f)
                try:
                    torch.save(checkpoint, cast(IO[bytes], writer))  # torch.save only writes and flushes
                except RuntimeError as error:
                    if writer.error is not None:  # the real cause, e.g. ENOSPC
                        raise writer.error from error
                    raise
                f.flush()
                with ThreadPoolExecutor(1) as pool:  # hash (page cache) while fsync waits for the disk
                    digest = pool.submit(read_sha256, tmp)
                    os.fsync(f.fileno())
            write_text_atomic(sidecar_path(path), f"{digest.result()}  {path.name}\n")

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            verify_checkpoint(path)
            on_cpu = map_location or (lambda storage, _location: storage)  # torch.load's idiom for the CPU
            return super().load_checkpoint(path, map_location=on_cpu, weights_only=True)
        except IntegrityError as error:
            raise CheckpointError(str(error)) from None
        except Exception as error:  # torch.load fails in many ways on a damaged file
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error


class ImageCheckpoint(Checkpoint):
    """Save a checkpoint whenever the image count crosses a multiple of ``every_kimg * 1000``,
    after the last optimizer step, and on a preemption signal; keep the newest ``keep`` (0 = all).

    Being a ``Checkpoint`` callback, Lightning runs it after every other callback, so the
    saved callback states (e.g. the EMAs) already include the step just taken.

    Preemption (``autoguide.runtime.preemption``): from ``setup`` to ``teardown`` the signals
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
        self._step_nimg = image_count(pl_module).nimg
        self.trigger.start(self._step_nimg)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        nimg = image_count(pl_module).nimg
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
                log.warning(
                    "preempted at nimg %d: saved %s; %s",
                    nimg,
                    path,
                    f"requeued SLURM job {requeued}" if requeued else "not requeued",
                )
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
                sidecar_path(old).unlink(missing_ok=True)
        return path
