"""Build a denoiser from its network config (the ``network`` entry of a model card)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoguide.nets.architectures import EnergyMLPConfig, MLPConfig, NetworkConfig, config_dict, network_config
from autoguide.nets.energy import EnergyDenoiser
from autoguide.nets.mlp import MLP
from autoguide.nets.precond import Precond
from autoguide.nets.unet import UNet

Denoiser = Precond | EnergyDenoiser
"""What ``build_network`` returns: ``net(x, sigma, labels)`` is the denoised ``x``."""

UNET_ONLY = ("arch", "sigma_data", "logvar_channels")
"""Config keys that belong to the preconditioning, not to the UNet's constructor."""


def build_network(cfg: NetworkConfig | Mapping[str, Any]) -> Denoiser:
    """The preconditioned denoiser ``cfg`` describes (``autoguide.nets.architectures``); its
    ``config`` attribute is the JSON form of the checked config (every key spelled out)."""
    cfg = network_config(cfg)
    common: dict[str, Any] = {
        "config": config_dict(cfg),
        "label_dim": cfg.label_dim,
        "img_channels": cfg.img_channels,
        "sigma_data": float(cfg.sigma_data),
        "logvar_channels": cfg.logvar_channels,
    }
    if isinstance(cfg, EnergyMLPConfig):
        return EnergyDenoiser(width=cfg.width, depth=cfg.depth, **common)
    if isinstance(cfg, MLPConfig):
        backbone = MLP(
            dim=cfg.img_channels,
            label_dim=cfg.label_dim,
            width=cfg.width,
            depth=cfg.depth,
            label_balance=cfg.label_balance,
        )
        return Precond(backbone, "mlp", img_resolution=0, **common)
    unet_kwargs = {k: v for k, v in common["config"].items() if k not in UNET_ONLY}
    return Precond(UNet(**unet_kwargs), "unet", img_resolution=cfg.img_resolution, **common)
