"""Checks of a training config before anything is built; each failure is one line naming the key.

``check_config`` looks at the config alone (numbers, ranges, managed Trainer keys, the network
config); ``check_against_data`` compares the network with the dataset it will be trained on
(resolution, channels, label width).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoguide.diffusion.loss import LOSS_WEIGHTINGS
from autoguide.nets import validate_network_config
from autoguide.train.optim import TARGETS, resolve_optimizer
from autoguide.train.plan import ConfigError, batch_plan, interval_images, total_images

MANAGED_TRAINER_KEYS = {
    "max_steps": "train.duration_mi",
    "max_epochs": "train.duration_mi",
    "min_steps": "train.duration_mi",
    "min_epochs": "train.duration_mi",
    "max_time": "train.duration_mi",
    "accumulate_grad_batches": "train.batch_per_device",
    "log_every_n_steps": "train.log_kimg",
    "callbacks": "the callbacks group",
    "logger": "the logger group",
    "default_root_dir": "run_dir",
    "plugins": "autoguide's atomic checkpoint plugin",
}
#: Network architectures that take vectors [N, dim] (the 2D toy) rather than images.
VECTOR_ARCHS = ("mlp", "energy_mlp")
INTERVAL_KEYS = ("log_kimg", "checkpoint_kimg", "sample_kimg", "snapshot_kimg")


def _number(cfg: Mapping[str, Any], key: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> float:
    """``cfg[key]`` as a float within the given bounds, else ``ConfigError`` naming ``train.<key>``."""
    value = cfg.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise ConfigError(f"train.{key}={value!r}: expected a number in {lo}, {hi}")
    return float(value)


def check_train(train: Mapping[str, Any]) -> None:
    """The ``train`` section: duration, batch, learning rate, noise levels, intervals."""
    total_images(train.get("duration_mi"), train.get("duration_fraction", 1.0))
    batch_plan(train.get("batch_size"), 1, train.get("batch_per_device"))  # the world size comes later
    _number(train, "lr_ref", 0, low_open=True)
    _number(train, "lr_ref_batches", 0)
    _number(train, "lr_rampup_mi", 0)
    _number(train, "P_mean", -math.inf)
    _number(train, "P_std", 0, low_open=True)
    _number(train, "cond_drop_prob", 0, 1, high_open=True)
    if train.get("target", "data") not in TARGETS:
        raise ConfigError(f"train.target={train.get('target')!r}: expected one of {list(TARGETS)}")
    if train.get("loss_weighting", "learned") not in LOSS_WEIGHTINGS:
        raise ConfigError(f"train.loss_weighting={train.get('loss_weighting')!r}: expected one of {list(LOSS_WEIGHTINGS)}")
    try:
        resolve_optimizer(train.get("optimizer"))
    except ValueError as error:
        raise ConfigError(f"train.{error}") from None
    for key in INTERVAL_KEYS:
        interval_images(train.get(key), f"train.{key}")


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Trainer keys that autoguide derives itself must not be set by hand."""
    for key in trainer:
        if key in MANAGED_TRAINER_KEYS:
            raise ConfigError(f"trainer.{key} is derived by autoguide; set {MANAGED_TRAINER_KEYS[key]} instead")


def check_net(net: Mapping[str, Any], train: Mapping[str, Any]) -> None:
    """The network config builds, and label dropout has labels to drop."""
    try:
        validate_network_config(net)
    except ValueError as error:
        raise ConfigError(f"net: {error}") from None
    if train.get("cond_drop_prob", 0) > 0 and not net.get("label_dim"):
        raise ConfigError(
            f"train.cond_drop_prob={train['cond_drop_prob']} needs a conditional network, but net.label_dim=0"
        )


def check_resume(resume: Any) -> None:
    """``resume`` is a string: ``auto``, ``never`` or a checkpoint path (checked when used)."""
    if resume is not None and not isinstance(resume, str):
        raise ConfigError(f"resume={resume!r}: expected 'auto', 'never' or a checkpoint path")


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone."""
    if OmegaConf.is_missing(cfg, "name"):
        raise ConfigError("name is not set: choose an experiment (experiment=...) or set name=<run name>")
    train = OmegaConf.to_container(cfg.train, resolve=True)
    check_train(train)
    check_trainer(OmegaConf.to_container(cfg.trainer, resolve=True))
    check_net(OmegaConf.to_container(cfg.net, resolve=True), train)
    check_resume(cfg.get("resume"))


def check_against_data(net: Mapping[str, Any], data_name: str, info: Mapping[str, int]) -> None:
    """The network takes the data's samples and labels (``info`` from
    ``DiffusionDataModule.dataset_info``)."""
    where = f"data {data_name!r}"
    if net.get("arch") in VECTOR_ARCHS:
        if info["img_resolution"] != 0:
            raise ConfigError(
                f"net.arch={net['arch']!r} takes vectors, but {where} has {info['img_resolution']}x{info['img_resolution']} images; use a UNet preset"
            )
    elif int(net["img_resolution"]) != info["img_resolution"]:
        got = "2D points" if info["img_resolution"] == 0 else f"{info['img_resolution']}x{info['img_resolution']} images"
        raise ConfigError(f"net.img_resolution={net['img_resolution']} does not match {where}, which has {got}")
    if int(net["img_channels"]) != info["img_channels"]:
        raise ConfigError(f"net.img_channels={net['img_channels']} does not match {where}, which has {info['img_channels']} channels")
    if int(net["label_dim"]) != info["label_dim"]:
        hint = (
            "set data.conditional=false to train an unconditional model"
            if int(net["label_dim"]) == 0
            else f"use net.label_dim={info['label_dim']}" + (" or data.conditional=true" if info["label_dim"] == 0 else "")
        )
        raise ConfigError(
            f"net.label_dim={net['label_dim']} does not match {where}, which feeds {info['label_dim']} label classes; {hint}"
        )
