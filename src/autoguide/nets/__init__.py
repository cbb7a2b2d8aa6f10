"""EDM2 networks: magnitude-preserving layers, the UNet, the toy MLPs and preconditioning."""

from autoguide.nets.architectures import (
    EnergyMLPConfig,
    MLPConfig,
    NetworkConfig,
    UNetConfig,
    config_dict,
    network_config,
)
from autoguide.nets.build import build_network
from autoguide.nets.compile import compile_network, is_compiled
from autoguide.nets.conv import MPConv
from autoguide.nets.fused import set_fused
from autoguide.nets.mp import MPFourier, mp_cat, mp_silu, mp_sum, normalize
from autoguide.nets.precond import Precond, precond_coefficients
from autoguide.nets.unet import AttentionOp, Block, UNet

__all__ = [
    "AttentionOp",
    "Block",
    "EnergyMLPConfig",
    "MLPConfig",
    "MPConv",
    "MPFourier",
    "NetworkConfig",
    "Precond",
    "UNet",
    "UNetConfig",
    "build_network",
    "compile_network",
    "config_dict",
    "is_compiled",
    "mp_cat",
    "mp_silu",
    "mp_sum",
    "network_config",
    "normalize",
    "precond_coefficients",
    "set_fused",
]
