"""The checks of a training config, before anything is built; each failure is one line naming
the key.

``autoguide.train.run_config.read_train_config`` runs the checks of the config alone
(``check_trainer``, ``check_resume``, ``check_run_dir``) while it builds the typed config;
``check_against_data`` compares the network with the dataset it will be
trained on (resolution, channels, label width); ``check_against_main`` compares a guide's data
with the main model it is trained for (``main_model``, e.g. an imported EDM2 release).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoguide.core.typed_settings import ConfigError
from autoguide.data.registry import TrainingSet
from autoguide.data.vae import check_same_latent_space
from autoguide.diffusion.loss import ExactTarget
from autoguide.io import ModelFileError, read_card
from autoguide.nets.architectures import VECTOR_ARCHS, NetworkConfig, UNetConfig, network_config
from autoguide.train.recipe import TrainSettings

MANAGED_TRAINER_KEYS = {
    "max_steps": "train.duration_mi",
    "max_epochs": "train.duration_mi",
    "min_steps": "train.duration_mi",
    "min_epochs": "train.duration_mi",
    "max_time": "train.duration_mi",
    "accumulate_grad_batches": "train.micro_batch",
    "log_every_n_steps": "train.log_kimg",
    "callbacks": "the callbacks group",
    "logger": "the logger group",
    "default_root_dir": "run_dir",
    "plugins": "autoguide's atomic checkpoint plugin",
}
RESUME_WORDS = ("auto", "never")
PRECISIONS = ("32-true", "32", "bf16-mixed")
"""Training precisions: float32, or bf16 autocast with float32 weights, optimizer state and EMAs
(docs/design.md, "Precision and speed"). fp16 would need loss scaling, which the non-finite
gradient clean-up of EDM2 would hide from the scaler; bf16-true would average EMAs in bf16."""


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Trainer keys that autoguide derives itself must not be set by hand; the precision is one
    of ``PRECISIONS``."""
    for key in trainer:
        if key in MANAGED_TRAINER_KEYS:
            raise ConfigError(f"trainer.{key} is derived by autoguide; set {MANAGED_TRAINER_KEYS[key]} instead")
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r}: expected one of {list(PRECISIONS)} "
            "(bf16-mixed keeps weights, optimizer state and EMAs in float32)"
        )


def check_accelerator(trainer: Mapping[str, Any]) -> None:
    """A GPU trainer needs a visible CUDA device (checked when the Trainer is built, after the
    config and data checks, which hold on any machine)."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA GPU is visible on this machine; use trainer=cpu")


def check_resume(resume: Any, resume_changed: Any = False) -> None:
    """``resume`` is a string: ``auto``, ``never`` or a checkpoint path (checked when used);
    ``resume_changed`` a boolean."""
    if resume is not None and not isinstance(resume, str):
        raise ConfigError(f"resume={resume!r}: expected 'auto', 'never' or a checkpoint path")
    if not isinstance(resume_changed, bool):
        raise ConfigError(f"resume_changed={resume_changed!r}: expected true or false")


def check_run_dir(run_dir: str | Path) -> None:
    """``run_dir`` is a folder or can become one: neither it nor a folder above it is a file."""
    path = Path(run_dir)
    for place in (path, *path.parents):
        if place.exists() and not place.is_dir():
            which = "run_dir" if place == path else f"the folder {place} above run_dir"
            raise ConfigError(
                f"run_dir={run_dir}: {which} is a file, expected a folder (check paths.runs_dir and name)"
            )


def exact_target(train: TrainSettings, dataset: TrainingSet, data_name: str) -> ExactTarget | None:
    """The loss's regression target: ``None`` for the sample itself (``train.target=data``), the
    dataset's closed-form ``E[y | y + n]`` for ``train.target=exact`` (``ConfigError`` if it has
    none)."""
    if train.target != "exact":
        return None
    denoiser = getattr(dataset, "exact_denoiser", None)
    if denoiser is None:
        raise ConfigError(
            f"train.target=exact needs a dataset whose distribution is known in closed form (toy2d); "
            f"data {data_name!r} has no exact denoiser"
        )
    return denoiser


def check_against_data(net: NetworkConfig, data_name: str, info: Mapping[str, int]) -> None:
    """The network takes the data's samples and labels (``info`` from
    ``autoguide.data.datamodule.dataset_info``)."""
    where = f"data {data_name!r}"
    if net.arch in VECTOR_ARCHS:
        if info["img_resolution"] != 0:
            raise ConfigError(
                f"net.arch={net.arch!r} takes vectors, but {where} has "
                f"{info['img_resolution']}x{info['img_resolution']} images; use a UNet preset"
            )
    elif isinstance(net, UNetConfig) and net.img_resolution != info["img_resolution"]:
        got = (
            "2D points" if info["img_resolution"] == 0 else f"{info['img_resolution']}x{info['img_resolution']} images"
        )
        raise ConfigError(f"net.img_resolution={net.img_resolution} does not match {where}, which has {got}")
    if net.img_channels != info["img_channels"]:
        raise ConfigError(
            f"net.img_channels={net.img_channels} does not match {where}, which has {info['img_channels']} channels"
        )
    if net.label_dim != info["label_dim"]:
        hint = (
            "set data.conditional=false to train an unconditional model"
            if net.label_dim == 0
            else f"use net.label_dim={info['label_dim']}"
            + (" or data.conditional=true" if info["label_dim"] == 0 else "")
        )
        raise ConfigError(
            f"net.label_dim={net.label_dim} does not match {where}, "
            f"which feeds {info['label_dim']} label classes; {hint}"
        )


def check_against_main(
    main_model: str, data_name: str, info: Mapping[str, int], latent: Mapping[str, Any] | None
) -> None:
    """A guide trained for the main model in file ``main_model`` sees data of the main's
    resolution, channels and classes, in the main's latent space (the same standardisation)."""
    try:
        card = read_card(main_model)
    except ModelFileError as error:
        raise ConfigError(f"main_model={main_model}: {error}") from None
    where, main = f"data {data_name!r}", network_config(card["network"])
    for key in ("img_resolution", "img_channels", "label_dim"):
        if getattr(main, key, None) != info[key]:
            raise ConfigError(
                f"main_model={main_model} has {key} {getattr(main, key, None)}, but {where} has {info[key]}"
            )
    try:
        check_same_latent_space(card.get("latent"), latent, f"main_model={main_model}", where)
    except ValueError as error:
        remedy = "a guide must see the main model's latents (data.standardize=edm2 for EDM2's releases)"
        raise ConfigError(f"{error}; {remedy}") from None
