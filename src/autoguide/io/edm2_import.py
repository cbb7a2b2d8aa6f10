"""Import the released EDM2 network pickles (NVlabs/edm2) without executing anything in them.

The released files (``edm2-img512-s-2147483-0.130.pkl``, ``edm2-img512-xs-0134217-0.125.pkl``,
``edm2-img512-xs-uncond-2147483-0.025.pkl``, ...) are ``pickle.dump`` of a dict with the keys
``ema`` (the network, fp16), ``encoder``, ``loss_fn`` and ``dataset_kwargs``. Their classes are
"persistent": each object is pickled as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with ``meta = {type: "class", version: 6, module_src: <source code of the module>,
class_name, state}``, and loading them the usual way ``exec``s ``module_src``. Tensors inside
are ``torch._utils._rebuild_tensor_v2(torch.storage._load_from_bytes(b), ...)`` where ``b`` is a
``torch.save`` of the storage.

Here a restricted unpickler resolves only the globals of that format, each to a stand-in of
ours: persistent objects become :class:`PersistentObject` records (class name + state;
``module_src`` is never executed or imported), storages are read with
``torch.load(..., weights_only=True)``, numpy arrays only with numeric dtypes. Any other global
is refused before anything runs. The network config is then rebuilt from the stored
attributes, checked against the weights' names and shapes, and written as our model file.

Release names carry the training length and the EMA length: ``<name>-<kimg:07d>-<std:.3f>.pkl``.
"""

from __future__ import annotations

import collections
import functools
import io
import itertools
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoguide.io.digest import file_sha256
from autoguide.io.model_file import save_model


class EDM2ImportError(ValueError):
    """A file is not an EDM2 network pickle of the released format, or asks for something unsafe."""


# ----------------------------------------------------------------------------------------------
# Restricted unpickling: every global of the format maps to a stand-in of ours.

#: Persistent classes of the released pickles that we read (networks_edm2, encoders, loss).
NETWORK_CLASSES = frozenset({"Precond", "UNet", "Block", "MPConv", "MPFourier"})
OTHER_CLASSES = frozenset({"StabilityVAEEncoder", "StandardRGBEncoder", "EDM2Loss"})
PERSISTENCE_VERSION = 6  # ``torch_utils.persistence._version`` of NVlabs/edm2


@dataclass(frozen=True)
class PersistentObject:
    """A persistent object of the pickle: its class name and its ``__dict__`` (never instantiated)."""

    class_name: str
    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        raise EDM2ImportError(f"persistent object {self.class_name!r} with extra pickled state: not part of the format")


class ModuleDictRecord:
    """Stand-in for ``torch.nn.ModuleDict``: keeps the pickled ``__dict__`` as ``state``."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise EDM2ImportError(f"ModuleDict state must be a dict, got {type(state).__name__}")
        self.state = state


class EasyDictRecord(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a plain dict subclass)."""

    def __setstate__(self, state: Any) -> None:
        if state:
            raise EDM2ImportError(f"EasyDict with instance attributes {sorted(state)} is not part of the format")


def _persistent_object(meta: Any) -> PersistentObject:
    """Stand-in for ``_reconstruct_persistent_obj``: validate ``meta``, keep class name and state."""
    expected = {"type", "version", "module_src", "class_name", "state"}
    if not isinstance(meta, dict) or set(meta) != expected:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise EDM2ImportError(f"persistent object meta has keys {keys}, expected {sorted(expected)}")
    if meta["type"] != "class" or meta["version"] != PERSISTENCE_VERSION:
        raise EDM2ImportError(
            f"persistent object of type {meta['type']!r}, version {meta['version']!r}; "
            f"expected type 'class', version {PERSISTENCE_VERSION}"
        )
    name = meta["class_name"]
    if name not in NETWORK_CLASSES | OTHER_CLASSES:
        raise EDM2ImportError(
            f"persistent class {name!r} is not part of the EDM2 release format "
            f"(known: {sorted(NETWORK_CLASSES | OTHER_CLASSES)}); its embedded source was not run"
        )
    if not isinstance(meta["module_src"], str) or not isinstance(meta["state"], dict):
        raise EDM2ImportError(f"persistent object {name!r}: module_src must be text and state a dict")
    return PersistentObject(name, meta["state"])


@dataclass(frozen=True)
class StorageRecord:
    """An untyped tensor storage and the dtype of its elements."""

    untyped: torch.UntypedStorage
    dtype: torch.dtype

    def __setstate__(self, state: Any) -> None:
        raise EDM2ImportError("tensor storage with extra pickled state: not part of the format")


def _load_storage(data: Any) -> StorageRecord:
    """Stand-in for ``torch.storage._load_from_bytes``: ``torch.load(bytes, weights_only=True)``."""
    if not isinstance(data, bytes):
        raise EDM2ImportError(f"tensor storage payload must be bytes, got {type(data).__name__}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        try:
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise EDM2ImportError(f"a tensor storage was refused by torch.load(weights_only=True): {err}") from err
        if not isinstance(storage, torch.storage.TypedStorage):
            raise EDM2ImportError(f"a tensor storage payload holds {type(storage).__name__}, expected a typed storage")
        return StorageRecord(storage.untyped(), storage.dtype)


def _check_no_hooks(hooks: Any, what: str) -> None:
    if not isinstance(hooks, dict) or hooks:
        raise EDM2ImportError(f"{what} carries backward hooks {hooks!r}; expected an empty OrderedDict")


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` with its arguments checked."""
    if not isinstance(storage, StorageRecord):
        raise EDM2ImportError(f"tensor built from {type(storage).__name__}, expected a storage")
    ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if ints is None or not all(isinstance(i, int) for i in ints) or not isinstance(requires_grad, bool):
        raise EDM2ImportError(f"malformed tensor arguments (offset {offset!r}, size {size!r}, stride {stride!r})")
    _check_no_hooks(hooks, "a tensor")
    if metadata:
        raise EDM2ImportError(f"a tensor carries metadata {metadata!r}; the format has none")
    return torch.empty(0, dtype=storage.dtype).set_(storage.untyped, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> torch.nn.Parameter:
    """Stand-in for ``torch._utils._rebuild_parameter``."""
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise EDM2ImportError(f"malformed parameter ({type(data).__name__}, requires_grad={requires_grad!r})")
    _check_no_hooks(hooks, "a parameter")
    return torch.nn.Parameter(data, requires_grad=requires_grad)


#: numpy dtype codes we rebuild (numbers only; object arrays would unpickle arbitrary items).
NUMPY_CODES = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})


class NumpyDtypeRecord:
    """Stand-in for ``numpy.dtype(code, align, copy)`` restricted to numeric codes."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if code not in NUMPY_CODES:
            raise EDM2ImportError(f"numpy dtype {code!r} is not allowed (allowed: {sorted(NUMPY_CODES)})")
        self.code = code
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise EDM2ImportError(f"malformed numpy dtype state {state!r}")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class NumpyArrayRecord:
    """Stand-in for ``numpy.ndarray``; ``__setstate__`` copies the raw bytes into ``array``."""

    def __setstate__(self, state: Any) -> None:
        ok = (
            isinstance(state, tuple)
            and len(state) == 5
            and isinstance(state[2], NumpyDtypeRecord)
            and isinstance(state[4], bytes)
        )
        if not ok:
            raise EDM2ImportError("malformed numpy array state (expected numeric raw data)")
        _, shape, dtype, fortran, raw = state
        stored = np.frombuffer(raw, dtype=dtype.to_numpy()).reshape(shape, order="F" if fortran else "C")
        self.array = np.array(stored, dtype=np.dtype(dtype.code))  # native byte order, own memory


def _numpy_reconstruct(subtype: Any, shape: Any, code: Any) -> NumpyArrayRecord:
    """Stand-in for ``numpy.core.multiarray._reconstruct``: only plain ndarrays."""
    if subtype is not NumpyArrayRecord:
        raise EDM2ImportError(f"numpy array of subtype {subtype!r} is not allowed")
    return NumpyArrayRecord()


def _numpy_scalar(dtype: Any, raw: Any) -> float | int | bool:
    """Stand-in for ``numpy.core.multiarray.scalar``: a Python number."""
    if not isinstance(dtype, NumpyDtypeRecord) or not isinstance(raw, bytes):
        raise EDM2ImportError("malformed numpy scalar")
    return np.frombuffer(raw, dtype=dtype.to_numpy())[0].item()


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise EDM2ImportError(
            f"_codecs.encode with {type(text).__name__}, {encoding!r}: only protocol-2 bytes (latin1) are allowed"
        )
    return text.encode("latin-1")


_NUMPY_GLOBALS: dict[str, Any] = {"_reconstruct": _numpy_reconstruct, "scalar": _numpy_scalar}

#: (module, name) -> stand-in. Nothing outside this table is ever resolved or imported.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("dnnlib.util", "EasyDict"): EasyDictRecord,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{
        (module, name): kind
        for module in ("builtins", "__builtin__")
        for name, kind in (("set", set), ("frozenset", frozenset))
    },
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): NumpyArrayRecord,
    ("numpy", "dtype"): NumpyDtypeRecord,
    **{(f"numpy.{core}.multiarray", name): fn for core in ("core", "_core") for name, fn in _NUMPY_GLOBALS.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        standin = ALLOWED_GLOBALS.get((module, name))
        if standin is None:
            raise EDM2ImportError(
                f"refusing global {module}.{name}: not part of the EDM2 network pickle format "
                "(nothing from the file was executed)"
            )
        return standin

    def persistent_load(self, pid: Any) -> Any:
        raise EDM2ImportError(f"refusing persistent id {pid!r}: not part of the EDM2 network pickle format")


def read_edm2_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level dict of release pickle ``path``, read without running any of its code.

    Returns ``{"ema": PersistentObject("Precond"), "encoder": ... | None, ...}``;
    ``EDM2ImportError`` naming the file for anything outside the format.
    """
    path = Path(path)
    if not path.is_file():
        raise EDM2ImportError(f"EDM2 pickle not found: {path}")
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except EDM2ImportError as err:
        raise EDM2ImportError(f"{path}: {err}") from err
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RuntimeError,
    ) as err:
        raise EDM2ImportError(f"{path}: not a readable EDM2 network pickle ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise EDM2ImportError(f"{path}: top level is {type(data).__name__}, expected the dict with an 'ema' network")
    unknown = sorted(set(data) - {"ema", "encoder", "loss_fn", "dataset_kwargs"})
    if unknown:
        raise EDM2ImportError(
            f"{path}: unexpected top-level key(s) {unknown}; expected ema, encoder, loss_fn, dataset_kwargs"
        )
    ema = data.get("ema")
    if not isinstance(ema, PersistentObject) or ema.class_name != "Precond":
        found = ema.class_name if isinstance(ema, PersistentObject) else type(ema).__name__
        raise EDM2ImportError(f"{path}: 'ema' is {found}, expected an EDM2 Precond network")
    return dict(data)


# ----------------------------------------------------------------------------------------------
# From the record tree to weights and a network config.


def _attr(obj: PersistentObject | ModuleDictRecord, name: str, where: str) -> Any:
    if name not in obj.state:
        raise EDM2ImportError(f"{where}: attribute {name!r} missing")
    return obj.state[name]


def _submodules(obj: PersistentObject | ModuleDictRecord, where: str) -> dict[str, PersistentObject | ModuleDictRecord]:
    children = {}
    for name, child in _attr(obj, "_modules", where).items():
        if child is None:
            continue
        if isinstance(child, PersistentObject) and child.class_name not in NETWORK_CLASSES:
            raise EDM2ImportError(f"{where}.{name}: {child.class_name} inside the network")
        if not isinstance(child, (PersistentObject, ModuleDictRecord)):
            raise EDM2ImportError(f"{where}.{name}: submodule of type {type(child).__name__}")
        children[name] = child
    return children


def network_state_dict(
    obj: PersistentObject | ModuleDictRecord, prefix: str = "", dtype: torch.dtype | None = torch.float32
) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of the record tree by state-dict name, as ``dtype``
    (``None``: as stored, without a copy)."""
    where = prefix.rstrip(".") or "ema"
    skip = set(obj.state.get("_non_persistent_buffers_set", ()))
    tensors = {**_attr(obj, "_parameters", where), **_attr(obj, "_buffers", where)}
    out = {}
    for name, value in tensors.items():
        if value is None or name in skip:
            continue
        if not isinstance(value, torch.Tensor):
            raise EDM2ImportError(f"{where}.{name}: expected a tensor, got {type(value).__name__}")
        out[prefix + name] = value.detach().to(dtype or value.dtype).contiguous()
    for name, child in _submodules(obj, where).items():
        out.update(network_state_dict(child, f"{prefix}{name}.", dtype))
    return out


_ENC_KEY = re.compile(r"(\d+)x\1_(conv|down|block(\d+))")
_BLOCK_KEY = re.compile(r"(?:enc|dec)\.(\d+)x\1_block\d+")

#: Reference constructor arguments and the config keys they set (same names in our config).
_INIT_KWARGS = {
    "img_resolution",
    "img_channels",
    "label_dim",
    "model_channels",
    "channel_mult",
    "channel_mult_noise",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "label_balance",
    "concat_balance",
    "channels_per_head",
    "dropout",
    "res_balance",
    "attn_balance",
    "clip_act",
    "sigma_data",
    "logvar_channels",
}


def _uniform(blocks: Mapping[str, PersistentObject | ModuleDictRecord], name: str) -> Any:
    values = {repr(_attr(b, name, f"ema.unet.{key}")) for key, b in blocks.items()}
    if len(values) != 1:
        raise EDM2ImportError(f"ema.unet: Block attribute {name!r} differs between blocks ({sorted(values)})")
    return _attr(next(iter(blocks.values())), name, "ema.unet")


def _levels(enc: Mapping[str, PersistentObject | ModuleDictRecord]) -> tuple[int, list[int], int]:
    """``(img_resolution, per-level widths, num_blocks)`` from the encoder's block names."""
    per_level: dict[int, list[str]] = {}
    for key in enc:
        match = _ENC_KEY.fullmatch(key)
        if match is None:
            raise EDM2ImportError(f"ema.unet.enc: unexpected entry {key!r}")
        per_level.setdefault(int(match[1]), []).append(match[2])
    resolutions = list(per_level)
    num_blocks = sum(kind.startswith("block") for kind in per_level[resolutions[0]])
    expected_kinds = [
        ["conv" if i == 0 else "down"] + [f"block{j}" for j in range(num_blocks)] for i in range(len(resolutions))
    ]
    halving = all(b * 2 == a for a, b in itertools.pairwise(resolutions))
    if not halving or [per_level[r] for r in resolutions] != expected_kinds or num_blocks == 0:
        raise EDM2ImportError(f"ema.unet.enc: block layout {per_level} is not the EDM2 UNet layout")
    widths = [int(_attr(enc[f"{r}x{r}_block0"], "out_channels", f"ema.unet.enc.{r}x{r}_block0")) for r in resolutions]
    return resolutions[0], widths, num_blocks


def _attention(
    blocks: Mapping[str, PersistentObject | ModuleDictRecord], widths: list[int], block_kwargs: Mapping[str, Any]
) -> tuple[list[int], int]:
    """``(attn_resolutions, channels_per_head)`` from the blocks' ``num_heads``."""
    heads: dict[int, set[bool]] = {}
    for key, block in blocks.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match is not None:
            heads.setdefault(int(match[1]), set()).add(int(_attr(block, "num_heads", f"ema.unet.{key}")) > 0)
    if any(len(v) != 1 for v in heads.values()):
        raise EDM2ImportError(f"ema.unet: attention differs between blocks of one resolution ({heads})")
    attn_resolutions = sorted((r for r, v in heads.items() if True in v), reverse=True)
    attn_blocks = {k: b for k, b in blocks.items() if int(_attr(b, "num_heads", k)) > 0}
    candidates = [block_kwargs.get("channels_per_head", 64)]
    candidates += [int(_attr(b, "out_channels", k)) // int(b.state["num_heads"]) for k, b in attn_blocks.items()]
    for cph in candidates:
        if all(int(b.state["out_channels"]) // cph == int(b.state["num_heads"]) for b in attn_blocks.values()):
            return attn_resolutions, cph
    raise EDM2ImportError(f"ema.unet: no channels_per_head fits the attention heads of widths {widths}")


def edm2_network_config(ema: PersistentObject) -> dict[str, Any]:
    """Our network config (``build_network`` keys) rebuilt from the stored attributes of ``ema``.

    Widths, levels and blocks come from the module tree; block options (dropout, balances,
    clipping, heads) from the Block attributes; the rest from Precond/UNet attributes. The
    constructor arguments the pickle records (``init_kwargs``) must agree with all of it.
    """
    top = _submodules(ema, "ema")
    unet, logvar_fourier = top.get("unet"), top.get("logvar_fourier")
    if not isinstance(unet, PersistentObject) or unet.class_name != "UNet":
        raise EDM2ImportError("ema: no 'unet' submodule of class UNet")
    if not isinstance(logvar_fourier, PersistentObject) or "freqs" not in _attr(
        logvar_fourier, "_buffers", "ema.logvar_fourier"
    ):
        raise EDM2ImportError("ema: no 'logvar_fourier' submodule with a 'freqs' buffer")
    parts = _submodules(unet, "ema.unet")
    enc, dec = (_submodules(parts[p], f"ema.unet.{p}") if p in parts else {} for p in ("enc", "dec"))
    blocks = {f"{p}.{k}": b for p, d in (("enc", enc), ("dec", dec)) for k, b in d.items() if not k.endswith("_conv")}
    if (
        not enc
        or not dec
        or any(not isinstance(b, PersistentObject) or b.class_name != "Block" for b in blocks.values())
    ):
        raise EDM2ImportError("ema.unet: expected ModuleDicts 'enc' and 'dec' of Blocks")
    resolution, widths, num_blocks = _levels(enc)
    if list(_uniform(blocks, "resample_filter")) != [1, 1]:
        raise EDM2ImportError(
            f"ema.unet: resample_filter {_uniform(blocks, 'resample_filter')}; only the box filter [1, 1] is supported"
        )
    for key, block in blocks.items():
        mode = "down" if key.endswith("_down") else "up" if key.endswith("_up") else "keep"
        if (block.state.get("flavor"), block.state.get("resample_mode")) != (key[:3], mode):
            raise EDM2ImportError(
                f"ema.unet.{key}: flavor/resample_mode {block.state.get('flavor')!r}/"
                f"{block.state.get('resample_mode')!r}, expected {key[:3]!r}/{mode!r}"
            )
    init_kwargs = dict(_attr(ema, "_init_kwargs", "ema") or {})
    init_kwargs.update(_attr(unet, "_init_kwargs", "ema.unet") or {})
    model_channels = int(init_kwargs.get("model_channels", widths[0]))
    if any(w % model_channels for w in widths):
        raise EDM2ImportError(f"ema.unet: level widths {widths} are not multiples of model_channels {model_channels}")
    attn_resolutions, channels_per_head = _attention(blocks, widths, init_kwargs)
    cfg: dict[str, Any] = {
        "arch": "unet",
        "img_resolution": int(_attr(ema, "img_resolution", "ema")),
        "img_channels": int(_attr(ema, "img_channels", "ema")),
        "label_dim": int(_attr(ema, "label_dim", "ema")),
        "model_channels": model_channels,
        "channel_mult": [w // model_channels for w in widths],
        "num_blocks": num_blocks,
        "attn_resolutions": attn_resolutions,
        "dropout": float(_uniform(blocks, "dropout")),
        "channels_per_head": channels_per_head,
        "res_balance": float(_uniform(blocks, "res_balance")),
        "attn_balance": float(_uniform(blocks, "attn_balance")),
        "clip_act": _uniform(blocks, "clip_act"),
        "label_balance": float(_attr(unet, "label_balance", "ema.unet")),
        "concat_balance": float(_attr(unet, "concat_balance", "ema.unet")),
        "sigma_data": float(_attr(ema, "sigma_data", "ema")),
        "logvar_channels": int(logvar_fourier.state["_buffers"]["freqs"].shape[0]),
    }
    if cfg["img_resolution"] != resolution:
        raise EDM2ImportError(
            f"ema: img_resolution {cfg['img_resolution']} but the encoder starts at {resolution}x{resolution}"
        )
    _embedding_widths(cfg, parts, widths)
    _check_init_kwargs(cfg, init_kwargs)
    return cfg


def _embedding_widths(cfg: dict[str, Any], parts: Mapping[str, Any], widths: list[int]) -> None:
    """Add ``channel_mult_noise`` / ``channel_mult_emb`` when they differ from their defaults."""
    noise = parts.get("emb_noise")
    if noise is None or "weight" not in _attr(noise, "_parameters", "ema.unet.emb_noise"):
        raise EDM2ImportError("ema.unet: no emb_noise weight")
    cemb, cnoise = noise.state["_parameters"]["weight"].shape
    for key, width, default in (("channel_mult_noise", cnoise, widths[0]), ("channel_mult_emb", cemb, max(widths))):
        if width != default:
            if width % cfg["model_channels"]:
                raise EDM2ImportError(
                    f"ema.unet: embedding width {width} is not a multiple of model_channels {cfg['model_channels']}"
                )
            cfg[key] = width // cfg["model_channels"]


def _check_init_kwargs(cfg: Mapping[str, Any], init_kwargs: Mapping[str, Any]) -> None:
    for key, value in init_kwargs.items():
        if key == "use_fp16":
            continue
        if key == "resample_filter" and list(value) == [1, 1]:
            continue
        if key not in _INIT_KWARGS:
            raise EDM2ImportError(f"ema: unknown constructor argument {key}={value!r} in init_kwargs")
        derived = cfg.get(key)
        if key == "attn_resolutions":
            value, derived = sorted(value), sorted(derived) if derived is not None else None
        elif isinstance(value, tuple):
            value = list(value)
        if value != derived:
            raise EDM2ImportError(f"ema: init_kwargs {key}={value!r} disagrees with the stored network ({derived!r})")


def latent_spec(encoder: Any, img_channels: int) -> dict[str, Any] | None:
    """The card's ``latent`` entry for the pickle's encoder (None for pixel models).

    EDM2's StabilityVAEEncoder stores ``scale = final_std / raw_std`` and
    ``bias = final_mean - raw_mean * scale``; inverted here as ``raw_std = final_std / scale``,
    ``raw_mean = (final_mean - bias) / scale`` (final_mean, final_std: its constructor
    arguments, default 0 and 0.5).
    """
    if encoder is None or (isinstance(encoder, PersistentObject) and encoder.class_name == "StandardRGBEncoder"):
        return None
    if not isinstance(encoder, PersistentObject) or encoder.class_name != "StabilityVAEEncoder":
        found = encoder.class_name if isinstance(encoder, PersistentObject) else type(encoder).__name__
        raise EDM2ImportError(f"encoder is {found}, expected StabilityVAEEncoder or StandardRGBEncoder")
    scale, bias = (_attr(encoder, k, "encoder") for k in ("scale", "bias"))
    if not all(isinstance(a, NumpyArrayRecord) and a.array.shape == (img_channels,) for a in (scale, bias)):
        raise EDM2ImportError(f"encoder: scale and bias must be arrays of {img_channels} values (the latent channels)")
    kwargs = _attr(encoder, "_init_kwargs", "encoder") or {}
    final_mean, final_std = float(kwargs.get("final_mean", 0.0)), float(kwargs.get("final_std", 0.5))
    s, b = scale.array.astype(np.float64), bias.array.astype(np.float64)
    return {
        "type": "stability_vae",
        "vae_name": str(_attr(encoder, "vae_name", "encoder")),
        "raw_mean": [_round(v) for v in (final_mean - b) / s],
        "raw_std": [_round(v) for v in final_std / s],
        "final_mean": final_mean,
        "final_std": final_std,
    }


def _round(x: float) -> float:
    """6 significant digits: the stored scale/bias are float32 (about 7 digits)."""
    return float(f"{x:.6g}")


_RELEASE_NAME = re.compile(r".*-(\d+)-(\d+\.\d+)\.pkl")


def release_nimg_and_std(name: str) -> tuple[int | None, float | None]:
    """``(nimg, ema_std)`` from a release/snapshot file name ``<prefix>-<kimg>-<std>.pkl``.

    The name holds ``kimg = nimg // 1000``; nimg is a multiple of 1024 images, so it is the
    largest multiple of 1024 below ``1000 (kimg + 1)`` (``0134217`` -> 128 Mi = 134,217,728).
    """
    match = _RELEASE_NAME.fullmatch(Path(name).name)
    if match is None:
        return None, None
    kimg = int(match[1])
    nimg = (1000 * (kimg + 1) - 1) // 1024 * 1024
    if nimg // 1000 != kimg:
        return None, float(match[2])
    return nimg, float(match[2])


@dataclass(frozen=True)
class EDM2Network:
    """The network of an EDM2 pickle: our config, its weights and the card's latent entry."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    latent: dict[str, Any] | None


@functools.lru_cache(maxsize=8)
def _expected_shapes(config_json: str) -> dict[str, torch.Size]:
    from autoguide.nets import build_network

    with torch.device("meta"):  # names and shapes only; no memory for the weights
        return {k: v.shape for k, v in build_network(json.loads(config_json)).state_dict().items()}


def read_edm2_network(pkl_path: str | os.PathLike, dtype: torch.dtype | None = torch.float32) -> EDM2Network:
    """Config (``config_dict`` form), weights (as ``dtype``; ``None`` keeps the stored fp16) and
    latent entry of EDM2 pickle ``pkl_path`` (a release file or a raw training snapshot). The
    weights must match the rebuilt config exactly (names and shapes); errors name the file."""
    from autoguide.nets import config_dict

    pkl_path = Path(pkl_path)
    data = read_edm2_pickle(pkl_path)
    ema = data["ema"]
    try:
        cfg = edm2_network_config(ema)
        state = network_state_dict(ema, dtype=dtype)
        latent = latent_spec(data.get("encoder"), cfg["img_channels"])
    except EDM2ImportError as err:
        raise EDM2ImportError(f"{pkl_path}: {err}") from err
    except (TypeError, AttributeError, KeyError, ValueError) as err:
        raise EDM2ImportError(f"{pkl_path}: malformed network record ({type(err).__name__}: {err})") from err
    del data, ema
    expected = _expected_shapes(json.dumps(cfg, sort_keys=True))
    found = {k: v.shape for k, v in state.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:5]
        unexpected = sorted(set(found) - set(expected))[:5]
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])[:5]
        raise EDM2ImportError(
            f"{pkl_path}: weights do not match the rebuilt config {cfg} "
            f"(missing {missing}, unexpected {unexpected}, wrong shape {wrong})"
        )
    return EDM2Network(config_dict(cfg), state, latent)


def import_edm2(
    pkl_path: str | os.PathLike,
    out_path: str | os.PathLike,
    nimg: int | None = None,
    ema_std: float | None = None,
    vae: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert release pickle ``pkl_path`` into our model file ``out_path``; returns the card.

    ``nimg`` / ``ema_std`` default to the values in the release file name (else null).
    ``vae``: the identity (``latent.vae_identity``) of the local VAE the release decodes with,
    recorded in the card's ``latent`` entry (a latent model only) so decoding checks it.
    The weights must match the rebuilt config exactly (names and shapes), or nothing is written.
    """
    pkl_path = Path(pkl_path)
    network = read_edm2_network(pkl_path)
    latent = network.latent
    if vae is not None:
        if latent is None:
            raise EDM2ImportError(f"{pkl_path}: a pixel-space model has no VAE; import it without --vae")
        latent = {**latent, "vae": dict(vae)}
    name_nimg, name_std = release_nimg_and_std(pkl_path.name)
    card = {
        "network": network.config,
        "nimg": nimg if nimg is not None else name_nimg,
        "ema_std": ema_std if ema_std is not None else name_std,
        "source": f"EDM2 release pickle {pkl_path.name} (sha256 {file_sha256(pkl_path)})",
        "latent": latent,
    }
    save_model(out_path, network.state, card)
    return card
