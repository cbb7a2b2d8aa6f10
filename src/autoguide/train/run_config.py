"""The composed ``train`` config as one typed object, built once at the app boundary.

``read_train_config`` turns the config that Hydra composed (``conf/train.yaml`` and the command
line, or a resolved file written by SIMS, ``autoguide.sims.retrain``) into a
``TrainRunConfig``: the typed settings of the run (network, recipe, seed, data), its folder and
resume policy, the main model a guide is trained for, and the Lightning groups that
``hydra.utils.instantiate`` builds (``trainer``, ``logger``, ``callbacks``) as plain mappings.
Everything under ``autoguide.train.run.train`` takes this object, never the composed config.
Each check runs here once, in the order below, and fails with one line naming the key; the
checks that need the data or a file (the dataset, the main model's card, the checkpoint) run
in ``autoguide.train.run``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from autoguide.core.typed_settings import ConfigError, from_mapping
from autoguide.data.datamodule import DataSettings
from autoguide.nets.architectures import network_config
from autoguide.train.recipe import RunSettings, TrainSettings
from autoguide.train.validate import check_resume, check_run_dir, check_trainer


@dataclass(frozen=True)
class HydraRecord:
    """Inside a Hydra app: Hydra's own node, read by the app (``autoguide.apps.train``) for the
    record the run writes into ``<output_dir>/logs/hydra``: ``output_dir`` (Hydra's output folder:
    the run folder, a multirun point's own folder), ``config`` (Hydra's config as composed,
    interpolations kept) and ``overrides`` (the task's command-line overrides)."""

    output_dir: Path
    config: dict[str, Any]
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class TrainRunConfig:
    """One training run's config, checked (see the module docstring).

    ``settings``: network, recipe and seed; ``data``: the training data; ``name``: the
    experiment; ``run_dir``: the run folder; ``resume``: ``auto``, ``never`` or a checkpoint
    path; ``resume_changed``: continue a checkpoint whose recorded settings differ
    (``autoguide.train.rerun``); ``main_model``: the model file a guide is trained for, or
    ``None``; ``trainer``, ``logger``, ``callbacks``: the Lightning groups as plain, resolved
    mappings (``_target_`` nodes for ``hydra.utils.instantiate``).

    The records the run writes keep the composed config whole, byte for byte as before the
    typed object existed: ``resolved`` (every interpolation resolved) is the run folder's
    ``config.yaml``, which the changed-rerun check, post-hoc EMA and SIMS read back;
    ``composed`` (interpolations kept, as Hydra composed it) is Hydra's own record,
    ``logs/hydra/config.yaml``, written next to ``hydra`` (``None`` outside a Hydra app: no
    such record).
    """

    settings: RunSettings
    data: DataSettings
    name: str
    run_dir: Path
    resume: str | None
    resume_changed: bool
    main_model: str | None
    trainer: dict[str, Any]
    logger: dict[str, Any]
    callbacks: dict[str, Any]
    resolved: dict[str, Any]
    composed: dict[str, Any]
    hydra: HydraRecord | None = None


def _as_dict(node: Any, key: str) -> dict[str, Any]:
    """The config section ``key`` as a plain ``dict`` (``ConfigError`` unless a mapping)."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {node!r}")
    return {str(k): v for k, v in node.items()}


def _group(resolved: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An optional Lightning group (``logger``, ``callbacks``): absent or null is empty."""
    node = resolved.get(key)
    return {} if node is None else _as_dict(node, key)


def _main_model(resolved: Mapping[str, Any], name: str) -> str | None:
    """The ``main_model`` a guide is trained for (absent or null: none); an experiment that needs
    one (``main_model: ???``) and was not given it is an error."""
    value = resolved.get("main_model")
    if value == MISSING:
        raise ConfigError(f"main_model is not set: experiment {name} trains a guide for it (main_model=<model file>)")
    return None if value is None else str(value)


def read_train_config(cfg: Any, hydra: HydraRecord | None = None) -> TrainRunConfig:
    """The composed ``train`` config ``cfg`` (a ``DictConfig`` or a plain mapping) as a checked
    ``TrainRunConfig`` (with Hydra's record ``hydra`` inside a Hydra app); ``ConfigError`` (one
    line naming the key) for an unusable value."""
    node = cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg)
    composed = _as_dict(OmegaConf.to_container(node, resolve=False), "config")
    if composed.get("name", MISSING) == MISSING:  # checked first: run_dir and loggers interpolate it
        raise ConfigError("name is not set: choose an experiment (experiment=...) or set name=<run name>")
    resolved = _as_dict(OmegaConf.to_container(node, resolve=True), "config")
    train = from_mapping(TrainSettings, _as_dict(resolved.get("train"), "train"), "train")
    trainer = _as_dict(resolved.get("trainer"), "trainer")
    check_trainer(trainer)
    net = network_config(_as_dict(resolved.get("net"), "net"))
    resume, resume_changed = resolved.get("resume"), resolved.get("resume_changed", False)
    check_resume(resume, resume_changed)
    run_dir = resolved.get("run_dir")
    if not isinstance(run_dir, str) or not run_dir:
        raise ConfigError(f"run_dir={run_dir!r}: expected the path of the run folder")
    check_run_dir(run_dir)
    settings = RunSettings(net, train, resolved.get("seed", 0))
    try:
        data = DataSettings.from_mapping(_as_dict(resolved.get("data"), "data"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    name = str(resolved["name"])
    return TrainRunConfig(
        settings=settings,
        data=data,
        name=name,
        run_dir=Path(run_dir),
        resume=resume,
        resume_changed=resume_changed,
        main_model=_main_model(resolved, name),
        trainer=trainer,
        logger=_group(resolved, "logger"),
        callbacks=_group(resolved, "callbacks"),
        resolved=resolved,
        composed=composed,
        hydra=hydra,
    )
