"""Export our EDM2 UNet models as plain state dicts with the reference (NVlabs/edm2) names.

Our ``Precond``/``UNet`` keep the reference module names (``unet.enc.64x64_block0.conv_res0.weight``,
``unet.dec.8x8_in0.attn_qkv.weight``, ``logvar_linear.weight``, ...) and the reference
constructor argument names, so the export is the state dict itself plus the keyword arguments
of the reference ``Precond(**kwargs)``:

    net = training.networks_edm2.Precond(**kwargs)
    net.load_state_dict(torch.load("model.pt", weights_only=True))

Output by suffix: ``.pt``/``.pth`` a ``torch.save`` of the tensors only (readable with
``weights_only=True``); ``.safetensors`` the tensors with the kwargs as JSON metadata under
``edm2.precond_kwargs``. Nothing is pickled beyond tensors; files are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from autoguide.io.atomic import atomic_path
from autoguide.io.model_file import load_denoiser

KWARGS_KEY = "edm2.precond_kwargs"
#: Top-level modules of the reference ``Precond`` state dict.
REFERENCE_PREFIXES = ("unet.", "logvar_fourier.", "logvar_linear.")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def edm2_precond_kwargs(network: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the reference ``Precond`` for our network config (same names)."""
    if network.get("arch") != "unet":
        raise ValueError(
            f"only EDM2 UNet models have a reference counterpart; this model has arch={network.get('arch')!r}"
        )
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in network.items() if k != "arch"}


def export_edm2(model_path: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "float32") -> dict[str, Any]:
    """Write model file ``model_path`` as a reference-named state dict to ``out_path``.

    ``dtype`` is ``float32`` or ``float16`` (the released pickles store fp16). Returns the
    reference ``Precond`` keyword arguments.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out_path = Path(out_path)
    if out_path.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"{out_path}: output must end in .pt, .pth or .safetensors")
    net = load_denoiser(model_path)
    kwargs = edm2_precond_kwargs(net.card["network"])
    state = {k: v.to(DTYPES[dtype]).contiguous() for k, v in net.state_dict().items()}
    foreign = sorted(k for k in state if not k.startswith(REFERENCE_PREFIXES))
    if foreign:
        raise ValueError(f"{model_path}: state dict entries {foreign[:5]} have no reference name")
    with atomic_path(out_path) as tmp:
        if out_path.suffix == ".safetensors":
            save_file(state, str(tmp), metadata={KWARGS_KEY: json.dumps(kwargs)})
        else:
            torch.save(state, tmp)
    return kwargs
