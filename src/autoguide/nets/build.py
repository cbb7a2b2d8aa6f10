"""Build a denoiser from its network config (the ``network`` entry of a model card)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoguide.nets.energy import EnergyDenoiser
from autoguide.nets.mlp import MLP
from autoguide.nets.precond import Precond
from autoguide.nets.unet import UNet

UNET_KEYS = {
    "arch", "img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult",
    "channel_mult_noise", "channel_mult_emb", "num_blocks", "attn_resolutions", "dropout",
    "label_balance", "concat_balance", "channels_per_head", "res_balance", "attn_balance",
    "clip_act", "sigma_data", "logvar_channels",
}
MLP_KEYS = {"arch", "img_channels", "label_dim", "width", "depth", "label_balance", "sigma_data", "logvar_channels"}
ENERGY_KEYS = {"arch", "img_channels", "label_dim", "width", "depth", "sigma_data", "logvar_channels"}
ARCHS = ("unet", "mlp", "energy_mlp")


def _check_keys(cfg: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"network config: unknown key(s) {unknown} for arch={cfg['arch']!r}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(cfg))
    if missing:
        raise ValueError(f"network config: missing key(s) {missing} for arch={cfg['arch']!r}")


def validate_network_config(cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key when ``cfg`` cannot build a network."""
    arch = cfg.get("arch")
    if arch == "unet":
        _check_keys(cfg, UNET_KEYS, {"img_resolution", "img_channels", "label_dim"})
        levels = len(cfg.get("channel_mult", (1, 2, 3, 4)))
        res = int(cfg["img_resolution"])
        if res <= 0 or res % (2 ** (levels - 1)) != 0:
            raise ValueError(
                f"network config: img_resolution={res} cannot be halved {levels - 1} times "
                f"(channel_mult has {levels} levels); use a multiple of {2 ** (levels - 1)}"
            )
    elif arch == "mlp":
        _check_keys(cfg, MLP_KEYS, {"img_channels", "label_dim"})
    elif arch == "energy_mlp":
        _check_keys(cfg, ENERGY_KEYS, {"img_channels", "label_dim"})
    else:
        raise ValueError(f"network config: arch must be one of {list(ARCHS)}, got {arch!r}")
    if int(cfg["label_dim"]) < 0:
        raise ValueError(f"network config: label_dim must be >= 0, got {cfg['label_dim']}")


def build_network(cfg: Mapping[str, Any]) -> Precond | EnergyDenoiser:
    """Build the preconditioned denoiser described by ``cfg`` (see docs/interfaces.md)."""
    cfg = {k: (list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v) for k, v in cfg.items()}
    validate_network_config(cfg)
    common = dict(
        config=cfg,
        label_dim=int(cfg["label_dim"]),
        img_channels=int(cfg["img_channels"]),
        sigma_data=float(cfg.get("sigma_data", 0.5)),
        logvar_channels=int(cfg.get("logvar_channels", 128)),
    )
    if cfg["arch"] == "energy_mlp":
        return EnergyDenoiser(width=int(cfg.get("width", 64)), depth=int(cfg.get("depth", 4)), **common)
    if cfg["arch"] == "mlp":
        backbone = MLP(
            dim=common["img_channels"],
            label_dim=common["label_dim"],
            width=int(cfg.get("width", 64)),
            depth=int(cfg.get("depth", 4)),
            label_balance=float(cfg.get("label_balance", 0.5)),
        )
        return Precond(backbone, "mlp", img_resolution=0, **common)
    unet_kwargs = {k: v for k, v in cfg.items() if k not in {"arch", "sigma_data", "logvar_channels"}}
    backbone = UNet(**unet_kwargs)
    return Precond(backbone, "unet", img_resolution=int(cfg["img_resolution"]), **common)
