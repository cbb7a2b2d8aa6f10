"""What SIMS reads from the base model's training run folder.

A run folder written by ``autoguide-train`` holds ``config.yaml`` (the resolved config) and
``logs/hydra/overrides.yaml`` (the command-line overrides it was started with). From them:

- the training command of the fine-tune: the base run's overrides plus SIMS's own, so the
  fine-tune uses the base's recipe (loss, batch, trainer, callbacks) on the synthetic data;
- the base run's learning rate at the end of its training, EDM2's
  ``alpha = alpha_ref / sqrt(max(nimg / (t_ref B), 1)) * min(nimg / rampup, 1)`` at the base
  model's ``nimg`` (its recipe, ``autoguide.train.recipe.TrainSettings.learning_rate``): the
  default fine-tune rate;
- the real training set (the ``data`` section without the loader's own keys,
  ``autoguide.data.datamodule.DataSettings``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoguide.core.typed_settings import from_mapping
from autoguide.data.datamodule import DataSettings
from autoguide.train.recipe import TrainSettings

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

    def recipe(self) -> TrainSettings:
        """The run's ``train`` section as typed settings; errors name the file."""
        try:
            return from_mapping(TrainSettings, self.config.get("train") or {}, f"{self.folder / CONFIG_NAME}: train")
        except ValueError as err:
            raise ValueError(f"{err}; cannot take the base run's final learning rate: set retrain.lr") from err

    def final_learning_rate(self, nimg: int) -> float:
        """The run's learning rate after ``nimg`` training images (its recipe's schedule)."""
        return self.recipe().learning_rate(int(nimg))

    def real_data(self) -> dict[str, Any]:
        """The dataset config of the run's training data (``name`` and that dataset's keys)."""
        data = self.config.get("data")
        if not isinstance(data, Mapping):
            raise ValueError(f"{self.folder / CONFIG_NAME}: no 'data' section; set real_data=<dataset config>")
        return DataSettings.from_mapping(data).dataset


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
