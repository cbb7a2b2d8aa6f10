"""Model files: safetensors weights with a JSON card in the safetensors metadata.

A card is enough to rebuild the network: ``{"format": "autoguide-model/1", "network": {...},
"nimg": int, "ema_std": float | None, "source": str, "sha256": str, ...}``. Files are written
atomically and never unpickled. ``sha256`` is the digest of the card and the weights
(``io.integrity.state_sha256``): a reader of the weights recomputes it and refuses a file whose
values changed since they were written. Non-finite weights are refused on write and on read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autoguide.io.atomic import atomic_path
from autoguide.io.integrity import DIGEST_KEY, NonFiniteError, check_finite, state_sha256

if TYPE_CHECKING:
    from autoguide.nets.build import Denoiser

CARD_KEY = "autoguide.card"
FORMAT = "autoguide-model/1"


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupted, not an autoguide model file, or holds
    non-finite weights."""


def save_model(
    path: str | os.PathLike, net_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor], card: Mapping[str, Any]
) -> str:
    """Write weights and ``card`` to ``path`` (safetensors), atomically; returns the card's
    ``sha256`` (the digest of card and weights).

    ``card`` must hold ``network`` (the config ``build_network`` takes); ``format`` and
    ``sha256`` are filled in. Non-finite weights are refused (``NonFiniteError`` naming the file
    and the tensor) before anything is written.
    """
    if "network" not in card:
        raise ValueError(f"model card for {path} has no 'network' entry (the architecture config)")
    state = net_or_state_dict.state_dict() if isinstance(net_or_state_dict, torch.nn.Module) else net_or_state_dict
    check_finite(state.items(), str(path))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    stored = json.loads(json.dumps({"format": FORMAT, **dict(card)}, default=_json_default))  # as a reader sees it
    stored[DIGEST_KEY] = state_sha256(tensors, stored)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CARD_KEY: json.dumps(stored)})
    return stored[DIGEST_KEY]


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"model card value {value!r} is not JSON serialisable")


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The card of model file ``path`` (reads only the header)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not a readable safetensors file ({err})") from err
    if CARD_KEY not in metadata:
        raise ModelFileError(f"{path} has no '{CARD_KEY}' metadata: not an autoguide model file")
    try:
        card = json.loads(metadata[CARD_KEY])
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: the model card is not valid JSON ({err})") from err
    if card.get("format") != FORMAT or "network" not in card:
        raise ModelFileError(
            f"{path}: model card has format {card.get('format')!r}, expected {FORMAT!r} with a 'network' entry"
        )
    return card


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, card)`` of model file ``path``, checked: the weights must be readable,
    finite and (for cards with ``sha256``) hash to the card's digest. ``ModelFileError``
    naming the file otherwise."""
    card = read_card(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: cannot read the weights (truncated or corrupt?): {err}") from err
    if DIGEST_KEY in card and state_sha256(state, card) != card[DIGEST_KEY]:
        raise ModelFileError(
            f"{path}: weights or card differ from the SHA-256 recorded in its card ({card[DIGEST_KEY][:16]}...): "
            "the file was corrupted after it was written; restore or rebuild it"
        )
    try:
        check_finite(state.items(), str(path), action="use")
    except NonFiniteError as err:
        raise ModelFileError(str(err)) from None
    return state, card


def load_denoiser(path: str | os.PathLike, device: str | torch.device = "cpu") -> Denoiser:
    """Rebuild the denoiser stored in ``path``: eval mode, no gradients, on ``device``.

    The returned module also carries the card as ``net.card``.
    """
    from autoguide.nets import build_network

    state, card = read_model_file(path)
    net = build_network(card["network"])
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise ModelFileError(
            f"{path}: weights do not match the card's network (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]})"
        )
    net.load_state_dict(state)
    net.card = card
    return net.eval().requires_grad_(False).to(device)
