"""Lightning callback that tracks power-function EMAs and stores post-hoc EMA snapshots
(Karras et al. 2024, EDM2, Sec. 3.2).

Contract with the training module: ``pl_module.net`` is the network being trained (with a
``config`` dict attribute) and ``pl_module.nimg`` (int) is the global number of training
images after the latest optimizer step. Whenever ``nimg`` has grown by ``dt`` since the
last update the EMAs take one update with that ``dt`` -- so gradient accumulation, any
batch size and any update spacing give the same profile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from autoguide.core.typed_settings import ConfigError, interval_images
from autoguide.core.units import KIMG, MI
from autoguide.ema.power import MAX_SIGMA_REL
from autoguide.ema.snapshots import (
    Snapshot,
    read_index,
    snapshot_filename,
    sorted_unique,
    write_index,
)
from autoguide.ema.tracker import PowerEMA
from autoguide.io import save_model
from autoguide.nets import network_config

CHECKPOINT_KEY = "autoguide_phema"


class PowerEMACallback(pl.Callback):
    """Track power EMAs of ``pl_module.net`` and write post-hoc EMA snapshots.

    Args:
        stds: relative EMA stds (``sigma_rel``) to track from the first step; EDM2 stores
            0.050 and 0.100 and reconstructs anything in between and somewhat beyond.
        snapshot_kimg: write a snapshot of every tracked EMA each time the image count
            crosses a multiple of ``snapshot_kimg`` kimg (and once at the end of
            training). Default 8 Mi images, as in EDM2.
        out_dir: snapshot folder; default ``<trainer.default_root_dir>/phema``.

    Files: ``phema-{nimg:012d}-{std:.4f}.safetensors`` (an ordinary autoguide model file,
    card with ``ema_std`` and ``nimg``) and ``index.json`` (see ``ema.snapshots``); only
    global rank 0 writes. The EMA state is saved in Lightning checkpoints under
    ``checkpoint["autoguide_phema"]``; a resumed run continues the same EMAs and drops
    index entries newer than the checkpoint (an abandoned continuation), so snapshots are
    neither duplicated nor lost. ``callback.ema.modules[std]`` are the live EMA networks
    (eval mode) for anyone who wants to evaluate them during training.
    """

    def __init__(
        self,
        stds: Sequence[float] = (0.050, 0.100),
        snapshot_kimg: float = 8 * MI / KIMG,
        out_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.stds = tuple(float(s) for s in stds)
        for std in self.stds:
            if not 0 < std <= MAX_SIGMA_REL:
                raise ConfigError(
                    f"callbacks.phema.stds={list(self.stds)}: each EMA std must lie in (0, {MAX_SIGMA_REL:.4f}]"
                )
        names = {snapshot_filename(0, s) for s in self.stds}
        if len(names) != len(self.stds):
            raise ValueError(f"EMA stds {list(self.stds)} must differ in their first 4 decimals")
        self.snapshot_nimg = interval_images(snapshot_kimg, "callbacks.phema.snapshot_kimg")
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.ema: PowerEMA | None = None
        self._restored: dict[str, Any] | None = None
        self._folder: Path | None = None
        self._entries: list[Snapshot] = []
        self._last_snapshot_nimg = 0

    # ----------------------------------------------------------------- training-module access
    @staticmethod
    def _net(pl_module: pl.LightningModule) -> nn.Module:
        net = getattr(pl_module, "net", None)
        if not isinstance(net, nn.Module):
            raise AttributeError(
                f"PowerEMACallback needs pl_module.net (the trained network), "
                f"got {type(net).__name__} on {type(pl_module).__name__}"
            )
        return getattr(net, "_orig_mod", net)  # unwrap torch.compile

    @staticmethod
    def _nimg(pl_module: pl.LightningModule) -> int:
        nimg = getattr(pl_module, "nimg", None)
        if nimg is None:
            raise AttributeError(
                f"PowerEMACallback needs pl_module.nimg (training images seen), missing on {type(pl_module).__name__}"
            )
        return int(nimg)

    @staticmethod
    def _config(net: nn.Module) -> Mapping[str, Any]:
        """The network config the snapshots record (``net.config``, set by ``build_network``)."""
        config = getattr(net, "config", None)
        if not isinstance(config, Mapping):
            raise AttributeError(f"PowerEMACallback needs net.config (a mapping), got {type(config).__name__}")
        return config

    # ------------------------------------------------------------------------------- hooks
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._restored = checkpoint.get(CHECKPOINT_KEY)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net, nimg = self._net(pl_module), self._nimg(pl_module)
        self.ema = PowerEMA(net, self.stds, nimg)
        state, self._restored = self._restored, None
        if state is not None:
            self.ema.load_state_dict(state["ema"])
            self._last_snapshot_nimg = int(state["last_snapshot_nimg"])
            if self.ema.nimg > nimg:
                raise ValueError(
                    f"checkpoint EMAs are at nimg {self.ema.nimg} but the training module "
                    f"restored nimg {nimg}; the checkpoint is inconsistent"
                )
        else:
            self._last_snapshot_nimg = nimg
            if nimg > 0:
                rank_zero_warn(
                    f"PowerEMACallback starts at nimg {nimg} without EMA state in the "
                    "checkpoint: the EMAs treat the current weights as the average so far"
                )
        self._folder = self.out_dir or Path(trainer.default_root_dir) / "phema"
        if trainer.is_global_zero:
            self._entries = self._open_folder(net, resumed=state is not None)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._sync(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer, pl_module)
        if self.ema is not None and self.ema.nimg > self._last_snapshot_nimg:
            self._snapshot(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.ema is None:
            return
        self._sync(trainer, pl_module)  # the saved EMAs belong to the saved weights
        checkpoint[CHECKPOINT_KEY] = {
            "ema": self.ema.state_dict(),
            "last_snapshot_nimg": self._last_snapshot_nimg,
        }

    # ----------------------------------------------------------------------------- helpers
    def _sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Update the EMAs to the current image count; snapshot when a multiple of
        ``snapshot_nimg`` was crossed since the last snapshot."""
        if self.ema is None:
            return
        self.ema.update(self._net(pl_module), self._nimg(pl_module))
        if self.ema.nimg // self.snapshot_nimg > self._last_snapshot_nimg // self.snapshot_nimg:
            self._snapshot(trainer, pl_module)

    def _open_folder(self, net: nn.Module, resumed: bool) -> list[Snapshot]:
        """Create the snapshot folder or reconcile it with the run being (re)started."""
        folder = self._folder
        assert folder is not None and self.ema is not None
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "index.json").exists():
            return []
        index = read_index(folder)
        if network_config(index.network) != network_config(self._config(net)):
            raise ValueError(
                f"{folder / 'index.json'}: snapshots of a different network architecture; "
                "use a fresh out_dir for this run"
            )
        if not resumed:
            if index.entries:
                raise ValueError(
                    f"{folder}: already holds {len(index.entries)} snapshots but this run "
                    "starts without EMA state; resume from the run's checkpoint or use a "
                    "fresh out_dir"
                )
            return []
        keep = [e for e in index.entries if e.nimg <= self.ema.nimg]
        stale = [e for e in index.entries if e.nimg > self.ema.nimg]
        if stale:
            rank_zero_warn(
                f"{folder}: removing {len(stale)} snapshots newer than the resumed checkpoint "
                f"(nimg > {self.ema.nimg}); the resumed run rewrites them"
            )
            write_index(folder, index.network, index.buffers, keep)
            for e in stale:
                e.path.unlink(missing_ok=True)
        return keep

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write every tracked EMA at the current image count (rank 0) and the index."""
        assert self.ema is not None and self._folder is not None
        nimg = self.ema.nimg
        if trainer.is_global_zero:
            net = self._net(pl_module)
            config = self._config(net)
            persistent = set(net.state_dict())
            buffers = [name for name, _ in net.named_buffers() if name in persistent]
            for std, module in self.ema.modules.items():
                path = self._folder / snapshot_filename(nimg, std)
                card = {
                    "network": config,
                    "nimg": nimg,
                    "ema_std": std,
                    "source": f"post-hoc EMA snapshot in {self._folder}",
                }
                self._entries.append(Snapshot(path, nimg, std, save_model(path, module, card)))
            self._entries = list(sorted_unique(self._entries))
            write_index(self._folder, config, buffers, self._entries)
        self._last_snapshot_nimg = nimg


__all__ = ["CHECKPOINT_KEY", "PowerEMACallback"]
