"""SIMS stage 3: fine-tune the model on its synthetic set for the budgets ``B``.

The fine-tune is an ordinary training run in the stage folder, started as its own process (so
multi-GPU strategies launch as for any run). Its config is built here, in the parent, once:
``conf/train.yaml`` composed with the base run's command-line overrides and the user's
``retrain.overrides`` (``fine_tune_config``), then the keys SIMS manages set as values; it is
checked as the typed training config (``autoguide.train.run_config.read_train_config``) and
written, resolved, to ``<stage>/fine_tune.yaml``, which the child trains from
(``autoguide-train --resolved-config <file>``: no override strings, no second composition).
The keys SIMS manages:

- ``data=shards`` on the synthetic shards, conditional iff the network is, regressing the
  samples themselves (``train.target=data``, also for a base trained on exact toy targets);
- the network of the initial model's card, whose weights ``callbacks.init_from``
  (``InitFromModel``) loads, and which refuses a batch size that does not divide the budgets;
  the image count starts at 0, so budgets and EMA lengths are relative to the fine-tune;
- ``train.duration_mi = max(B) / 2**20``; learning rate ``retrain.lr`` (default: the base
  run's final rate) with decay ``retrain.lr_ref_batches`` and warm-up ``retrain.lr_rampup_mi``
  (default 0 and 0: constant), a fresh optimizer (``train.optimizer``: EDM2's Adam unless the
  base recipe or ``retrain.overrides`` name another ``torch.optim`` class);
- post-hoc EMA snapshots (``retrain.ema_stds``) every ``gcd(B)`` images, so that every budget
  is a snapshot time; checkpoints every ``retrain.checkpoint_kimg`` (default the same).

A killed stage is re-run with the same command, which resumes from the newest checkpoint
(``resume=auto``). The stage is complete when the snapshot index has every tracked std at
every budget.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from autoguide.core.units import MI
from autoguide.ema.snapshots import INDEX_NAME, read_index
from autoguide.io import write_text_atomic
from autoguide.nets import config_dict
from autoguide.sims.records import file_sha256, run_whole_stage
from autoguide.train.run_config import read_train_config

log = logging.getLogger(__name__)

STAGE = "retrain"
TRAIN_COMMAND = (sys.executable, "-m", "autoguide.apps.train", "--resolved-config")
"""``autoguide-train`` in the running interpreter (also where the console script is not installed),
training from a resolved config file."""
CONFIG_NAME = "fine_tune.yaml"
"""The fine-tune's resolved training config, in the stage folder."""
ComposeTraining = Callable[[Sequence[str]], DictConfig]
"""``conf/train.yaml`` composed with the given overrides: the app's
``autoguide.apps.config_tree.compose`` (the library does not import the apps)."""
MANAGED_KEYS = (
    "name",
    "run_dir",
    "resume",
    "data",
    "data.path",
    "data.conditional",
    "callbacks.phema.stds",
    "train.duration_mi",
    "train.duration_fraction",
    "train.lr_ref",
    "train.lr_ref_batches",
    "train.lr_rampup_mi",
    "train.snapshot_kimg",
    "train.checkpoint_kimg",
    "train.sample_kimg",
    "train.target",
)
"""Training keys SIMS sets itself (other ``data.*`` keys, such as ``data.num_workers``, may be
overridden in ``retrain.overrides``)."""
MANAGED_TREES = ("net", "callbacks.init_from")
"""Config subtrees SIMS sets in full."""
RESOURCE_KEYS = ("trainer.devices", "trainer.num_nodes", "data.num_workers")
"""Overrides that say how, not what, is trained: left out of the stage spec, so a resumed run
may use another allocation."""
BASE_DROPPED_TREES = ("data", "hydra")
"""Subtrees whose base-run overrides do not carry over: its data and Hydra's own settings."""


def override_key(override: str) -> str:
    """The config key of a Hydra override: ``++a.b=1`` -> ``a.b``, ``hydra/launcher=x`` -> ``hydra/launcher``."""
    return override.lstrip("~+").partition("=")[0]


def _in_tree(key: str, tree: str) -> bool:
    return key == tree or key.startswith((tree + ".", tree + "/"))


def is_managed(override: str) -> bool:
    """Whether an override sets a key SIMS manages in the fine-tune's config."""
    key = override_key(override)
    return key in MANAGED_KEYS or any(_in_tree(key, tree) for tree in MANAGED_TREES)


def carried_base_overrides(base_overrides: Sequence[str]) -> list[str]:
    """The base run's overrides that the fine-tune keeps (experiment, trainer, loss, batch...):
    all but its data, Hydra settings and the keys SIMS sets (single ``net.*`` values too); the
    ``net`` group choice stays, since the card's network keys come from it."""
    kept = []
    for o in base_overrides:
        key = override_key(o)
        if key == "net" or not (is_managed(o) or any(_in_tree(key, tree) for tree in BASE_DROPPED_TREES)):
            kept.append(o)
    return kept


@dataclass(frozen=True)
class RetrainSettings:
    """The ``retrain`` config group with the learning rate resolved."""

    budgets: tuple[int, ...]
    lr: float
    lr_ref_batches: float = 0.0
    lr_rampup_mi: float = 0.0
    ema_stds: tuple[float, ...] = (0.05, 0.10)
    checkpoint_kimg: float | None = None
    overrides: tuple[str, ...] = ()
    launcher: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.budgets or any(int(b) != b or b < 1 for b in self.budgets):
            raise ValueError(
                f"budget_mi gives budgets of {list(self.budgets)} images: "
                "each must be a positive whole number of images"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"retrain.lr={self.lr!r}: expected a positive learning rate")
        for o in self.overrides:
            if is_managed(o):
                raise ValueError(
                    f"retrain.overrides: {o!r} sets a key SIMS manages ({', '.join(MANAGED_KEYS + MANAGED_TREES)}); "
                    "use the sims config (budget_mi, retrain.*) instead"
                )

    @property
    def snapshot_nimg(self) -> int:
        """Images between snapshots: the greatest common divisor of the budgets."""
        return reduce(math.gcd, (int(b) for b in self.budgets))


def managed_values(
    run_dir: Path, name: str, init_model: Path, network: Mapping[str, Any], shards: Path, settings: RetrainSettings
) -> dict[str, Any]:
    """The values of the keys SIMS manages in the fine-tune's config (see the module docstring)."""
    every_kimg = settings.snapshot_nimg / 1000
    return {
        "name": name,
        "run_dir": str(run_dir),
        "resume": "auto",
        "data.path": str(shards),
        "data.conditional": bool(network.get("label_dim")),
        "net": config_dict(network),
        "callbacks.init_from": {
            "_target_": "autoguide.sims.init_callback.InitFromModel",
            "path": str(init_model),
            "budgets": list(settings.budgets),
        },
        "callbacks.phema.stds": list(settings.ema_stds),
        "train.duration_mi": max(settings.budgets) / MI,
        "train.duration_fraction": 1.0,
        "train.lr_ref": settings.lr,
        "train.lr_ref_batches": settings.lr_ref_batches,
        "train.lr_rampup_mi": settings.lr_rampup_mi,
        "train.snapshot_kimg": every_kimg,
        "train.checkpoint_kimg": settings.checkpoint_kimg or every_kimg,
        "train.sample_kimg": max(settings.budgets) / 1000,
        "train.target": "data",  # the synthetic set is samples: no closed-form target
    }


def fine_tune_config(
    compose_training: ComposeTraining,
    run_dir: Path,
    name: str,
    init_model: Path,
    network: Mapping[str, Any],
    shards: Path,
    settings: RetrainSettings,
    base_overrides: Sequence[str],
) -> DictConfig:
    """The fine-tune's training config, resolved: ``conf/train.yaml`` (``compose_training``) with
    ``data=shards``, the base run's carried overrides and ``retrain.overrides``, then
    ``managed_values`` set; checked as typed settings (``ConfigError`` naming the key)."""
    cfg = compose_training([*carried_base_overrides(base_overrides), *settings.overrides, "data=shards"])
    with open_dict(cfg):
        del cfg["net"]  # replaced whole: the card's network, whatever the preset was
        for key, value in managed_values(run_dir, name, init_model, network, shards, settings).items():
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    assert isinstance(resolved, DictConfig)
    read_train_config(resolved)
    return resolved


def check_snapshots(run_dir: Path, settings: RetrainSettings) -> list[Path]:
    """The snapshot files up to the largest budget, after checking that every budget has a
    snapshot of every tracked std; errors name the folder and the missing (budget, std)."""
    index = read_index(run_dir / "phema")
    have = {(e.nimg, round(e.std, 6)) for e in index.entries}
    missing = [(b, s) for b in settings.budgets for s in settings.ema_stds if (b, round(float(s), 6)) not in have]
    if missing:
        raise ValueError(
            f"retrain: {run_dir / 'phema'} has no snapshot for (nimg, std) {missing[:4]}; is callbacks.phema enabled?"
        )
    return [e.path for e in index.entries if e.nimg <= max(settings.budgets)] + [index.folder / INDEX_NAME]


def run_training(config_file: Path, launcher: Sequence[str], run_dir: Path) -> None:
    """Train from the resolved config ``config_file`` in a child process (after ``launcher``)."""
    command = [*launcher, *TRAIN_COMMAND, str(config_file)]
    log.info("retrain: %s", " ".join(command))
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        raise RuntimeError(
            f"retrain: the training run exited with status {status} (its messages are above); if it was "
            "interrupted, run the same autoguide-sims command again to resume from its newest checkpoint in "
            f"{run_dir / 'checkpoints'}"
        )


def retrain_stage(
    compose_training: ComposeTraining,
    folder: Path,
    init_model: Path,
    network: Mapping[str, Any],
    manifest_path: Path,
    shards: Path,
    settings: RetrainSettings,
    base_overrides: Sequence[str],
    name: str,
) -> dict[str, Any]:
    """Run (or skip) the fine-tune in ``folder`` (a training run folder); returns the record."""
    spec = {
        "init_sha256": file_sha256(init_model),
        "manifest_sha256": file_sha256(manifest_path),
        "budgets": list(settings.budgets),
        "lr": settings.lr,
        "lr_ref_batches": settings.lr_ref_batches,
        "lr_rampup_mi": settings.lr_rampup_mi,
        "ema_stds": list(settings.ema_stds),
        "checkpoint_kimg": settings.checkpoint_kimg,
        "network": config_dict(network),
        "base_overrides": carried_base_overrides(base_overrides),
        "overrides": [o for o in settings.overrides if override_key(o) not in RESOURCE_KEYS],
    }

    def work() -> tuple[list[Path], dict[str, Any]]:
        cfg = fine_tune_config(
            compose_training,
            folder.resolve(),
            name,
            init_model.resolve(),
            network,
            shards.resolve(),
            settings,
            base_overrides,
        )
        config_file = folder / CONFIG_NAME
        write_text_atomic(config_file, OmegaConf.to_yaml(cfg))
        run_training(config_file, settings.launcher, folder)
        return check_snapshots(folder, settings), {
            "budgets": list(settings.budgets),
            "lr": settings.lr,
            "config": CONFIG_NAME,
        }

    return run_whole_stage(folder, STAGE, spec, work)
