"""Weight-space SIMS: one extrapolated model instead of a second network at sampling time.

``theta = (1 + w') theta_base - w' theta_synth = theta_base + w' (theta_base - theta_synth)``
for every floating-point parameter; buffers that are not learned (the fixed Fourier
frequencies and phases) and non-float tensors are taken from the base. The cheap baseline
to score-space SIMS (Alemohammad et al. 2024): no extra network evaluation when sampling.
EDM2's magnitude-preserving layers normalise their weights in the forward pass, so the
extrapolated weights are used at their normalised direction.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from autoguide.io import read_model_file, save_model
from autoguide.nets import build_network, network_config


def extrapolate(
    base: Mapping[str, torch.Tensor], synth: Mapping[str, torch.Tensor], weight: float, frozen: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """``base + weight (base - synth)`` per floating tensor (computed in float64, stored in the
    base's dtype); ``frozen`` names and non-float tensors are copied from ``base``."""
    if not math.isfinite(weight):
        raise ValueError(f"weight-space SIMS weight must be finite, got {weight}")
    if set(base) != set(synth):
        raise ValueError(f"base and synthetic weights differ in their tensors: {sorted(set(base) ^ set(synth))[:5]}")
    out = {}
    for key, value in base.items():
        other = synth[key]
        if value.shape != other.shape:
            raise ValueError(f"tensor {key}: base shape {list(value.shape)}, synthetic shape {list(other.shape)}")
        if key in frozen or not value.is_floating_point():
            out[key] = value.clone()
        else:
            wide = value.to(torch.float64)
            out[key] = (wide + weight * (wide - other.to(torch.float64))).to(value.dtype)
    return out


def frozen_buffers(network: Mapping[str, Any]) -> set[str]:
    """Names of the persistent buffers of the network a card describes (never averaged)."""
    net = build_network(dict(network))
    state = set(net.state_dict())
    return {name for name, _ in net.named_buffers() if name in state}


def write_weightspace_model(
    path: Path, base_path: Path, synth_path: Path, weight: float, extra_card: Mapping[str, Any]
) -> Path:
    """Write the model ``theta_base + weight (theta_base - theta_synth)`` to ``path``."""
    base, base_card = read_model_file(base_path)
    synth, synth_card = read_model_file(synth_path)
    if network_config(base_card["network"]) != network_config(synth_card["network"]):
        raise ValueError(
            f"{synth_path}: its network differs from the base model {base_path}; "
            "weight-space SIMS needs one architecture"
        )
    card = {
        "network": base_card["network"],
        "nimg": base_card.get("nimg"),
        "ema_std": base_card.get("ema_std"),
        "source": f"weight-space SIMS: (1 + {weight:g}) {base_path} - {weight:g} {synth_path}",
        "sims": {"variant": "weight_space", "weight": weight, **extra_card},
    }
    save_model(path, extrapolate(base, synth, weight, frozen_buffers(base_card["network"])), card)
    return path
