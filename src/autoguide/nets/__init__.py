"""EDM2 networks: magnitude-preserving layers, the UNet, the toy MLP and preconditioning."""

from autoguide.nets.build import build_network, validate_network_config
from autoguide.nets.mp import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize
from autoguide.nets.precond import Precond, precond_coefficients
from autoguide.nets.presets import PRESETS, get_preset
from autoguide.nets.unet import AttentionOp, Block, UNet

__all__ = [
    "AttentionOp", "Block", "MPConv", "MPFourier", "PRESETS", "Precond", "UNet", "build_network",
    "get_preset", "mp_cat", "mp_silu", "mp_sum", "normalize", "precond_coefficients",
    "validate_network_config",
]
