"""Post-hoc EMA models for sweeps, reconstructed once and reused: cached by (run, std, nimg).

A run's reconstructions live in ``<run>/reconstructed/`` (``autoguide-reconstruct``'s default
output folder). A wanted EMA is found there by reading the cards of the files (``nimg`` and
``ema_std``); only the missing ones are rebuilt, all in one reconstruction pass, with
``autoguide.ema.reconstruct.reconstruct``.

Times: ``None`` is the run's last snapshot; a number ``t <= 1`` (or a string ``"1/16"``) is a
fraction of the last snapshot's nimg (the nearest snapshot time); a larger integer is an
image count.
"""

from __future__ import annotations

import logging
import os
from argparse import ArgumentTypeError
from collections.abc import Sequence
from pathlib import Path

from autoguide.ema.reconstruct import collect_snapshots, parse_fraction, reconstruct, resolve_target_nimg
from autoguide.ema.snapshots import INDEX_NAME
from autoguide.io import ModelFileError, read_card

log = logging.getLogger(__name__)
STD_TOLERANCE = 1e-9


def snapshot_folder(run: str | os.PathLike) -> Path:
    """``<run>/phema`` of a run folder, or ``run`` itself if it holds the snapshot index."""
    run = Path(run).expanduser()
    for folder in (run / "phema", run):
        if (folder / INDEX_NAME).is_file():
            return folder
    raise FileNotFoundError(f"{run}: no post-hoc EMA snapshots ({run / 'phema' / INDEX_NAME} does not exist)")


def parse_time(value: float | int | str | None) -> tuple[int | None, float | None]:
    """``(at_nimg, at_fraction)`` of a time: None -> last, ``t <= 1`` or "a/b" -> fraction, else nimg."""
    if value is None:
        return None, None
    if isinstance(value, str):
        try:
            return None, parse_fraction(value)
        except ArgumentTypeError as err:
            raise ValueError(f"EMA time {value!r}: {err}") from None
    if value <= 0:
        raise ValueError(f"EMA time must be positive, got {value!r}")
    if value <= 1:
        return None, float(value)
    if value != int(value):
        raise ValueError(f"EMA time {value!r}: an image count must be an integer (fractions are <= 1)")
    return int(value), None


def target_nimg(run: str | os.PathLike, time: float | int | str | None) -> int:
    """The snapshot time (nimg) that ``time`` means for ``run``."""
    snapshots = collect_snapshots([snapshot_folder(run)]).snapshots
    return resolve_target_nimg(snapshots, *parse_time(time))


def cached_models(folder: Path, nimg: int) -> dict[float, Path]:
    """``{ema_std: file}`` of the model files in ``folder`` whose card says ``nimg``."""
    found = {}
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            card = read_card(path)
        except ModelFileError as err:
            log.warning("ignoring %s: %s", path, err)
            continue
        if card.get("nimg") == nimg and card.get("ema_std") is not None:
            found[float(card["ema_std"])] = path
    return found


def ema_models(
    run: str | os.PathLike,
    time: float | int | str | None,
    stds: Sequence[float],
    max_error: float = 0.05,
    batch: int = 8,
) -> tuple[int, dict[float, Path]]:
    """``(nimg, {std: model file})`` of ``run``'s EMAs ``stds`` at ``time``; reconstructs the
    ones not yet in ``<run>/reconstructed``."""
    phema = snapshot_folder(run)
    nimg = target_nimg(run, time)
    out_dir = phema.resolve().parent / "reconstructed"

    def lookup() -> dict[float, Path]:
        cached = cached_models(out_dir, nimg)
        return {s: next((p for c, p in cached.items() if abs(c - s) <= STD_TOLERANCE), None) for s in stds}

    found = lookup()
    missing = [s for s, p in found.items() if p is None]
    if missing:
        log.info("reconstructing %s at nimg %d, std %s -> %s", phema, nimg, missing, out_dir)
        reconstruct([phema], missing, at_nimg=nimg, out_dir=out_dir, batch=batch, max_error=max_error, progress=False)
        found = lookup()
    absent = [s for s, p in found.items() if p is None]
    if absent:
        raise FileNotFoundError(f"{out_dir}: no model file with nimg {nimg} and ema_std {absent} after reconstruction")
    return nimg, found
