"""The post-hoc EMA snapshot folder: ``<run>/phema/``.

One safetensors model file per (nimg, std) snapshot, each a complete autoguide model file
(card with ``network``, ``nimg``, ``ema_std``), plus ``index.json``:

    {"format": "autoguide-phema-index/1",
     "network": {...architecture config...},
     "buffers": ["unet.emb_fourier.freqs", ...],      # copied, never averaged
     "entries": [{"file": "phema-000000524288-0.0500.safetensors",
                  "nimg": 524288, "std": 0.05}, ...]}

Entries are unique per (nimg, std) and sorted by (nimg, std). Every file is written to a
temporary name in the same folder and renamed into place (``autoguide.io``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoguide.io import write_text_atomic

INDEX_NAME = "index.json"
INDEX_FORMAT = "autoguide-phema-index/1"


@dataclass(frozen=True)
class Snapshot:
    """One stored EMA: the EMA with relative std ``std`` read at ``nimg`` images."""

    path: Path
    nimg: int
    std: float


@dataclass(frozen=True)
class SnapshotIndex:
    """Contents of one ``index.json``."""

    folder: Path
    network: dict[str, Any]
    buffers: tuple[str, ...]
    entries: tuple[Snapshot, ...]


def snapshot_filename(nimg: int, std: float) -> str:
    """``phema-{nimg:012d}-{std:.4f}.safetensors``; sorts by time."""
    return f"phema-{int(nimg):012d}-{float(std):.4f}.safetensors"


def sorted_unique(entries: Iterable[Snapshot]) -> tuple[Snapshot, ...]:
    """Entries sorted by (nimg, std); a later entry replaces an earlier one with the same key."""
    by_key = {(e.nimg, e.std): e for e in entries}
    return tuple(by_key[k] for k in sorted(by_key))


def write_index(
    folder: Path, network: Mapping[str, Any], buffers: Sequence[str], entries: Iterable[Snapshot]
) -> None:
    """Write ``folder/index.json`` atomically (entries deduplicated and sorted)."""
    payload = {
        "format": INDEX_FORMAT,
        "network": dict(network),
        "buffers": sorted(buffers),
        "entries": [
            {"file": e.path.name, "nimg": e.nimg, "std": e.std} for e in sorted_unique(entries)
        ],
    }
    write_text_atomic(Path(folder) / INDEX_NAME, json.dumps(payload, indent=1) + "\n")


def read_index(folder: Path) -> SnapshotIndex:
    """Read and validate ``folder/index.json``; errors name the file and the bad field."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no post-hoc EMA index (expected a phema/ folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON index ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: format is {found!r}, expected {INDEX_FORMAT!r}")
    for key, kind in (("network", dict), ("buffers", list), ("entries", list)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{path}: field {key!r} must be a JSON {kind.__name__}")
    entries = []
    for i, item in enumerate(data["entries"]):
        try:
            entries.append(Snapshot(folder / str(item["file"]), int(item["nimg"]), float(item["std"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: entry {i} must have file, nimg and std, got {item!r}"
            ) from exc
    return SnapshotIndex(folder, data["network"], tuple(data["buffers"]), tuple(entries))
