"""EDM2 pickles written like the released ones and EDM2's raw training snapshots, for tests and
benchmarks.

NVlabs/edm2's ``torch_utils.persistence`` pickles each network object as a call
``_reconstruct_persistent_obj(meta)`` with ``module_src``, ``class_name`` and ``state``; the top
level is a ``dnnlib.util.EasyDict``. Here these are built from our own classes with fake modules
registered only while pickling (``fake_edm2_modules``); the fake reconstruct function and every
``module_src`` would leave a sentinel file (and raise) if anything ever ran them.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from autoguide.nets import AttentionOp, build_network
from autoguide.nets.unet import HookPoint

TINY = {
    "arch": "unet",
    "img_resolution": 16,
    "img_channels": 4,
    "label_dim": 10,
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.1,
    "channels_per_head": 16,
}
#: Released XS file holding the guide of the autoguidance recipe (T/16 = 128 Mi images, EMA 0.125).
GUIDE_NAME = "edm2-img512-xs-0134217-0.125.pkl"
#: Attributes the reference classes keep in ``__dict__`` (training/networks_edm2.py).
REFERENCE_ATTRS = {
    "Precond": ("img_resolution", "img_channels", "label_dim", "sigma_data"),
    "UNet": ("label_balance", "concat_balance"),
    "Block": (
        "out_channels",
        "flavor",
        "resample_mode",
        "num_heads",
        "dropout",
        "res_balance",
        "attn_balance",
        "clip_act",
    ),
    "MPConv": ("out_channels",),
    "MPFourier": (),
}


@contextlib.contextmanager
def fake_edm2_modules(sentinel: Path) -> Iterator[types.SimpleNamespace]:
    """Register fake ``torch_utils.persistence`` / ``dnnlib.util`` modules while inside; yield
    ``Persistent`` and ``EasyDict`` that pickle like the reference ones."""
    poison = f"import os\nos.system('touch {sentinel}')\nraise SystemExit('module_src was executed')\n"

    def reconstruct(meta):
        sentinel.touch()
        raise AssertionError("the importer called the pickle's reconstruct function")

    persistence = types.ModuleType("torch_utils.persistence")
    reconstruct.__module__, reconstruct.__name__, reconstruct.__qualname__ = (
        persistence.__name__,
        "_reconstruct_persistent_obj",
        "_reconstruct_persistent_obj",
    )
    persistence._reconstruct_persistent_obj = reconstruct

    class EasyDict(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError as err:
                raise AttributeError(name) from err

        def __setattr__(self, name, value):
            self[name] = value

    util = types.ModuleType("dnnlib.util")
    EasyDict.__module__, EasyDict.__qualname__ = util.__name__, "EasyDict"
    util.EasyDict = EasyDict

    class Persistent:
        """Pickles exactly like a reference persistent object."""

        def __init__(self, class_name, state):
            self.meta = {"type": "class", "version": 6, "module_src": poison, "class_name": class_name, "state": state}

        def __reduce__(self):
            return reconstruct, (self.meta,)

    fakes = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        yield types.SimpleNamespace(Persistent=Persistent, EasyDict=EasyDict)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def module_state(params, buffers, modules):
    """A torch.nn.Module ``__dict__`` as this torch pickles it, with the given contents."""
    state = torch.nn.Module().__getstate__()
    state.update(training=False, _parameters=params, _buffers=buffers, _modules=modules)
    return state


def reference_tree(fake, module, init_kwargs=None):
    """The released object tree of our ``module`` (fp16 tensors, reference attributes)."""
    if isinstance(module, torch.nn.ModuleDict):
        tree = torch.nn.ModuleDict()
        tree.__dict__["_modules"] = {k: reference_tree(fake, v) for k, v in module.items()}
        return tree
    name = type(module).__name__
    params = {k: torch.nn.Parameter(v.detach().half(), requires_grad=False) for k, v in module._parameters.items()}
    buffers = {k: v.half() for k, v in module._buffers.items()}
    children = {
        k: reference_tree(fake, v) for k, v in module._modules.items() if not isinstance(v, (AttentionOp, HookPoint))
    }
    state = module_state(params, buffers, children)
    state.update({a: getattr(module, a) for a in REFERENCE_ATTRS[name]})
    state.update(_init_args=(), _init_kwargs=init_kwargs or {})
    if name == "Precond":
        state["use_fp16"] = True
    if name == "Block":
        state["resample_filter"] = [1, 1]
        state.update({k: None for k in ("conv_skip", "attn_qkv", "attn_proj") if k not in children})
    if name == "UNet" and "emb_label" not in children:
        state["emb_label"] = None
    return fake.Persistent(name, state)


def vae_encoder(fake, raw_mean=(5.81, 3.25, 0.12, -2.15), raw_std=(4.17, 4.62, 3.71, 3.28)):
    scale = np.float32(0.5) / np.float32(raw_std)
    bias = np.float32(0) - np.float32(raw_mean) * scale
    state = {
        "vae_name": "stabilityai/sd-vae-ft-mse",
        "scale": scale,
        "bias": bias,
        "batch_size": 8,
        "_vae": None,
        "_init_args": (),
        "_init_kwargs": {},
    }
    return fake.Persistent("StabilityVAEEncoder", state)


def write_release(fake, path, net, encoder="vae", protocol=pickle.DEFAULT_PROTOCOL, **extra):
    cfg = net.config
    precond_kwargs = {
        "img_resolution": cfg["img_resolution"],
        "img_channels": cfg["img_channels"],
        "label_dim": cfg["label_dim"],
        "model_channels": cfg["model_channels"],
        "dropout": cfg["dropout"],
        "use_fp16": True,
    }
    enc = (
        vae_encoder(fake)
        if encoder == "vae"
        else fake.Persistent("StandardRGBEncoder", {"_init_args": (), "_init_kwargs": {}})
    )
    data = fake.EasyDict(
        encoder=enc,
        dataset_kwargs=fake.EasyDict(
            class_name="training.dataset.ImageFolderDataset", path="img512-sd.zip", use_labels=True
        ),
        loss_fn=fake.Persistent(
            "EDM2Loss", {"P_mean": -0.4, "P_std": 1.0, "sigma_data": 0.5, "_init_args": (), "_init_kwargs": {}}
        ),
        ema=reference_tree(fake, net, precond_kwargs),
    )
    data.update(extra)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


def fp16_state(net):
    return {k: v.half().float() for k, v in net.state_dict().items()}


def tiny_net(**overrides):
    torch.manual_seed(0)
    return build_network({**TINY, **overrides})


def raw_snapshot_name(nimg: int, std: float, prefix: str = "network-snapshot") -> str:
    """EDM2's raw snapshot file name: ``<prefix>-<nimg // 1000:07d>-<std:.3f>.pkl``."""
    return f"{prefix}-{nimg // 1000:07d}-{std:.3f}.pkl"


def write_raw_snapshots(
    fake, folder: Path, net: torch.nn.Module, states, prefix: str = "network-snapshot"
) -> list[Path]:
    """One raw snapshot per ``states[(nimg, std)]`` (a state dict of ``net``), fp16, as EDM2's
    training loop writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (nimg, std), state in states.items():
        net.load_state_dict(state)
        paths.append(write_release(fake, folder / raw_snapshot_name(nimg, std, prefix), net))
    return paths
