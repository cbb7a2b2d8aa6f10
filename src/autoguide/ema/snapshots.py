"""The post-hoc EMA snapshot folder: ``<run>/phema/``.

One safetensors model file per (nimg, std) snapshot, each a complete autoguide model file
(card with ``network``, ``nimg``, ``ema_std``), plus ``index.json``:

    {"format": "autoguide-phema-index/1",
     "network": {...architecture config...},
     "buffers": ["unet.emb_fourier.freqs", ...],      # copied, never averaged
     "entries": [{"file": "phema-000000524288-0.0500.safetensors",
                  "nimg": 524288, "std": 0.05, "sha256": "9f2c..."}, ...]}

Entries are unique per (nimg, std) and sorted by (nimg, std). Every file is written to a
temporary name in the same folder and renamed into place (``autoguide.io``). ``sha256`` is the
digest of the snapshot's card and weights (``io.integrity.state_sha256``, also in its card):
``read_snapshot`` refuses a file whose contents are not the ones the index recorded (bytes
changed on disk, or a file of another run put in its place).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoguide.io import ModelFileError, read_model_file, write_text_atomic

INDEX_NAME = "index.json"
INDEX_FORMAT = "autoguide-phema-index/1"


@dataclass(frozen=True)
class Snapshot:
    """One stored EMA: the EMA with relative std ``std`` read at ``nimg`` images."""

    path: Path
    nimg: int
    std: float
    sha256: str | None = None  # None: an index written before snapshots carried digests


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


def write_index(folder: Path, network: Mapping[str, Any], buffers: Sequence[str], entries: Iterable[Snapshot]) -> None:
    """Write ``folder/index.json`` atomically (entries deduplicated and sorted)."""
    payload = {
        "format": INDEX_FORMAT,
        "network": dict(network),
        "buffers": sorted(buffers),
        "entries": [
            {"file": e.path.name, "nimg": e.nimg, "std": e.std, **({"sha256": e.sha256} if e.sha256 else {})}
            for e in sorted_unique(entries)
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
            digest = item.get("sha256")
            if digest is not None and not isinstance(digest, str):
                raise TypeError(f"sha256 must be a string, got {digest!r}")
            entries.append(Snapshot(folder / str(item["file"]), int(item["nimg"]), float(item["std"]), digest))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {i} must have file, nimg and std, got {item!r}") from exc
    return SnapshotIndex(folder, data["network"], tuple(data["buffers"]), tuple(entries))


def read_snapshot(snap: Snapshot) -> dict[str, torch.Tensor]:
    """The weights of ``snap``, verified: the file's card and weights hash to its card's
    ``sha256`` (``io.read_model_file``) and that digest is the one the index recorded.
    ``ModelFileError`` naming the file otherwise."""
    state, card = read_model_file(snap.path)
    if snap.sha256 is not None and card.get("sha256") != snap.sha256:
        raise ModelFileError(
            f"{snap.path}: SHA-256 {str(card.get('sha256'))[:16]}... differs from the one in "
            f"{snap.path.parent / INDEX_NAME} ({snap.sha256[:16]}...): not the snapshot this index recorded"
        )
    return state
