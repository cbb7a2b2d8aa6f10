"""``pair.json``: a base model and its SIMS negative, as the sampler uses them.

    {"format": "autoguide-sims-pair/1", "kind": "sims",
     "positive": "../../base/ema-...safetensors",      # the base model
     "negative": "negative.safetensors",               # the model fine-tuned on its own samples
     "sha256": {"positive": "...", "negative": "..."},
     "budget_nimg": 524288, "ema_std": 0.1, "iteration": 0,
     "weight_space": [{"weight": 1.0, "model": "weightspace-w1.000.safetensors"}],
     "generate": "autoguide-generate model=... guidance=sims guidance.model=... guidance.omega=OMEGA"}

Paths inside the SIMS folder are stored relative to the folder of ``pair.json`` (the folder
can be moved), others absolute. Sampling with the pair: ``s = (1 + omega) s_positive -
omega s_negative`` (Alemohammad et al. 2024), i.e. the generation config's ``guidance=sims``
term (Karras weight ``w = 1 + omega``) with the negative as its model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoguide.io.atomic import write_text_atomic
from autoguide.io.digest import file_sha256

PAIR_NAME = "pair.json"
PAIR_FORMAT = "autoguide-sims-pair/1"


@dataclass(frozen=True)
class SimsPair:
    """A base model, its SIMS negative and the weight-space models made from the two."""

    positive: Path
    negative: Path
    budget_nimg: int
    ema_std: float
    iteration: int
    weight_space: dict[float, Path] = field(default_factory=dict)

    def guidance(self, omega: float, interval: Sequence[float] | None = None) -> dict[str, Any]:
        """The generation config's ``guidance`` entry for SIMS with ``omega`` (w = 1 + omega)."""
        return {
            "kind": "sims",
            "omega": float(omega),
            "interval": None if interval is None else list(interval),
            "model": str(self.negative),
        }

    def generate_overrides(self, omega: float | str) -> list[str]:
        """Command-line overrides of ``autoguide-generate`` that sample with this pair."""
        return [f"model={self.positive}", "guidance=sims", f"guidance.model={self.negative}", f"guidance.omega={omega}"]


def _stored(path: Path, folder: Path, root: Path) -> str:
    path = Path(path).resolve()
    if path.is_relative_to(root.resolve()):
        return os.path.relpath(path, folder.resolve())
    return str(path)


def write_pair(path: Path, pair: SimsPair, root: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``pair`` to ``path`` (files under ``root`` stored relative to ``path``'s folder)."""
    folder = path.parent
    stored = lambda p: _stored(p, folder, root)  # noqa: E731
    data = {
        "format": PAIR_FORMAT,
        "kind": "sims",
        "positive": stored(pair.positive),
        "negative": stored(pair.negative),
        "sha256": {"positive": file_sha256(pair.positive), "negative": file_sha256(pair.negative)},
        "budget_nimg": int(pair.budget_nimg),
        "ema_std": float(pair.ema_std),
        "iteration": int(pair.iteration),
        "weight_space": [{"weight": float(w), "model": stored(p)} for w, p in sorted(pair.weight_space.items())],
        "generate": " ".join(["autoguide-generate", *pair.generate_overrides("OMEGA")]),
        **dict(extra or {}),
    }
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_pair(path: str | os.PathLike, check_hashes: bool = False) -> SimsPair:
    """Read a ``pair.json``; the model files must exist (and match their hashes if asked)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the SIMS pair file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != PAIR_FORMAT:
        raise ValueError(
            f"{path}: format {data.get('format') if isinstance(data, dict) else None!r}, expected {PAIR_FORMAT!r}"
        )
    resolve = lambda p: (path.parent / p).resolve()  # noqa: E731
    try:
        pair = SimsPair(
            positive=resolve(data["positive"]),
            negative=resolve(data["negative"]),
            budget_nimg=int(data["budget_nimg"]),
            ema_std=float(data["ema_std"]),
            iteration=int(data["iteration"]),
            weight_space={float(e["weight"]): resolve(e["model"]) for e in data.get("weight_space", [])},
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: malformed SIMS pair file ({err!r}); needs positive, negative, budget_nimg, ema_std, iteration"
        ) from err
    for role, model in (
        ("positive", pair.positive),
        ("negative", pair.negative),
        *((f"weight_space {w:g}", p) for w, p in pair.weight_space.items()),
    ):
        if not model.is_file():
            raise FileNotFoundError(f"{path}: the {role} model {model} does not exist")
    if check_hashes:
        for role in ("positive", "negative"):
            if file_sha256(getattr(pair, role)) != data["sha256"][role]:
                raise ValueError(
                    f"{path}: the {role} model {getattr(pair, role)} changed since the pair was written "
                    "(SHA-256 differs)"
                )
    return pair
