"""What SIMS reads from the base model's training run folder.

A run folder written by ``autoguide-train`` holds ``config.yaml`` (the resolved config) and
``logs/hydra/overrides.yaml`` (the command-line overrides it was started with). From them:

- the training command of the fine-tune: the base run's overrides plus SIMS's own, so the
  fine-tune uses the base's recipe (loss, batch, trainer, callbacks) on the synthetic data;
- the base run's learning rate at the end of its training, EDM2's
  ``alpha = alpha_ref / sqrt(max(nimg / (t_ref B), 1)) * min(nimg / rampup, 1)`` at the base
  model's ``nimg`` (``autoguide.diffusion.learning_rate``): the default fine-tune rate;
- the real training set (the ``data`` section without the datamodule's own keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoguide.core.units import MI
from autoguide.diffusion import learning_rate

CONFIG_NAME = "config.yaml"
OVERRIDES_PATH = "logs/hydra/overrides.yaml"


@dataclass(frozen=True)
class BaseRun:
    """A training run folder's resolved config and its command-line overrides."""

    folder: Path
    config: dict[str, Any]
    overrides: tuple[str, ...]

    @property
    def phema(self) -> Path:
        return self.folder / "phema"

    def final_learning_rate(self, nimg: int) -> float:
        """The run's learning rate after ``nimg`` training images."""
        train = self.config.get("train") or {}
        try:
            return learning_rate(
                int(nimg),
                float(train["lr_ref"]),
                float(train["lr_ref_batches"]),
                int(train["batch_size"]),
                float(train["lr_rampup_mi"]) * MI,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{self.folder / CONFIG_NAME}: cannot compute the final learning rate from train.lr_ref, "
                f"lr_ref_batches, batch_size, lr_rampup_mi ({err!r}); set retrain.lr"
            ) from err

    def real_data(self) -> dict[str, Any]:
        """The dataset config of the run's training data (``name`` and that dataset's keys)."""
        from autoguide.data.datamodule import DiffusionDataModule

        data = self.config.get("data")
        if not isinstance(data, Mapping):
            raise ValueError(f"{self.folder / CONFIG_NAME}: no 'data' section; set real_data=<dataset config>")
        return dict(DiffusionDataModule({**data, "batch_size": 1}).dataset_cfg)


def read_base_run(folder: str | Path) -> BaseRun:
    """Read a training run folder; errors name the missing or malformed file."""
    folder = Path(folder).resolve()
    paths = {"config": folder / CONFIG_NAME, "overrides": folder / OVERRIDES_PATH}
    loaded = {}
    for key, path in paths.items():
        try:
            loaded[key] = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise FileNotFoundError(
                f"base_run={folder}: cannot read {path} ({err}); is it an autoguide training run folder?"
            ) from err
    if not isinstance(loaded["config"], dict):
        raise ValueError(f"{paths['config']}: expected a mapping (the resolved training config)")
    overrides = loaded["overrides"] or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"{paths['overrides']}: expected a list of override strings")
    return BaseRun(folder, loaded["config"], tuple(overrides))
