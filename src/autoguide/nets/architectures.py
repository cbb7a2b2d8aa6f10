"""Network configs: what a model card's ``network`` entry and the ``net`` config group hold.

One frozen dataclass per architecture, selected by ``arch``; their defaults are EDM2's (Karras
et al. 2024, config G: channel_mult (1, 2, 3, 4), 3 blocks per level, attention at 16x16 and
8x8, heads of 64 channels, res/attn balance 0.3, label/concat balance 0.5, activations clipped
at 256, sigma_data 0.5, a 128-channel uncertainty embedding). ``network_config`` checks a
mapping once (unknown keys, ranges, a resolution the levels can halve); ``build_network`` and
every comparison of two networks (snapshots, fine-tunes, weight-space SIMS) go through it, so a
card that spells out a default and one that leaves it out describe the same network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoguide.core.typed_settings import ConfigError, from_mapping, number, positive_int, to_dict


def _check_common(cfg: Any) -> None:
    if isinstance(cfg.label_dim, bool) or not isinstance(cfg.label_dim, int) or cfg.label_dim < 0:
        raise ConfigError(f"net.label_dim={cfg.label_dim!r}: expected an integer >= 0")
    if isinstance(cfg.img_channels, bool) or not isinstance(cfg.img_channels, int) or cfg.img_channels <= 0:
        raise ConfigError(f"net.img_channels={cfg.img_channels!r}: expected a positive integer")
    number(cfg.sigma_data, "net.sigma_data", 0, low_open=True)


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """The EDM2 UNet (``autoguide.nets.unet.UNet``) inside EDM preconditioning."""

    arch: str = "unet"
    img_resolution: int
    img_channels: int
    label_dim: int
    model_channels: int = 192
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    channel_mult_noise: int | None = None
    channel_mult_emb: int | None = None
    num_blocks: int = 3
    attn_resolutions: list[int] = field(default_factory=lambda: [16, 8])
    dropout: float = 0.0
    label_balance: float = 0.5
    concat_balance: float = 0.5
    channels_per_head: int = 64
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float | None = 256
    sigma_data: float = 0.5
    logvar_channels: int = 128

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "channel_mult", [int(m) for m in self.channel_mult])
        object.__setattr__(self, "attn_resolutions", [int(r) for r in self.attn_resolutions])
        levels = len(self.channel_mult)
        res = self.img_resolution
        if isinstance(res, bool) or not isinstance(res, int) or res <= 0 or res % (2 ** (levels - 1)):
            raise ConfigError(
                f"net: img_resolution={res} cannot be halved {levels - 1} times "
                f"(channel_mult has {levels} levels); use a multiple of {2 ** (levels - 1)}"
            )
        number(self.dropout, "net.dropout", 0, 1, high_open=True)


@dataclass(frozen=True, kw_only=True)
class _VectorNetConfig:
    """What both 2D-data networks take: ``width`` x ``depth`` magnitude-preserving layers."""

    img_channels: int
    label_dim: int
    width: int = 64
    depth: int = 4
    sigma_data: float = 0.5
    logvar_channels: int = 128

    def __post_init__(self) -> None:
        _check_common(self)
        positive_int(self.width, "net.width")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ConfigError(f"net.depth={self.depth!r}: expected an integer >= 0")


@dataclass(frozen=True, kw_only=True)
class MLPConfig(_VectorNetConfig):
    """The magnitude-preserving MLP denoiser for 2D data (``autoguide.nets.mlp``)."""

    arch: str = "mlp"
    label_balance: float = 0.5


@dataclass(frozen=True, kw_only=True)
class EnergyMLPConfig(_VectorNetConfig):
    """The energy-parametrised MLP for 2D data (``autoguide.nets.energy``): labels enter the
    first layer, so it has no label balance."""

    arch: str = "energy_mlp"


NetworkConfig = UNetConfig | MLPConfig | EnergyMLPConfig
ARCHS: dict[str, type] = {"unet": UNetConfig, "mlp": MLPConfig, "energy_mlp": EnergyMLPConfig}
VECTOR_ARCHS = ("mlp", "energy_mlp")
"""Architectures that take vectors ``[N, dim]`` (the 2D toy) rather than images."""


def network_config(cfg: NetworkConfig | Mapping[str, Any]) -> NetworkConfig:
    """The checked config of ``cfg`` (a config object, or a mapping such as a model card's
    ``network`` entry); ``ConfigError`` naming ``net.<key>`` otherwise."""
    if dataclasses.is_dataclass(cfg):
        return cfg
    arch = cfg.get("arch") if isinstance(cfg, Mapping) else None
    if arch not in ARCHS:
        raise ConfigError(f"net.arch={arch!r}: expected one of {list(ARCHS)}")
    return from_mapping(ARCHS[arch], cfg, "net", f" for arch={arch!r}")


def config_dict(cfg: NetworkConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a network config (every key spelled out), as stored in model cards."""
    return to_dict(network_config(cfg))
