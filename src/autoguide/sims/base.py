"""SIMS stage 1: the base model.

Either a given model file (recorded with its SHA-256, not copied) or a post-hoc EMA
reconstruction (``autoguide.ema.PosthocEMA``) from a training run's ``phema/`` snapshots at
EMA std ``ema_std`` and time ``at_nimg`` (default: the last snapshot), written into the
stage folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoguide.ema.posthoc import PosthocEMA
from autoguide.io import file_sha256, read_card
from autoguide.sims.base_run import BaseRun
from autoguide.sims.records import run_stage, run_whole_stage

STAGE = "base"


def base_stage(
    folder: Path, model: str | Path | None, run: BaseRun | None, ema_std: float, at_nimg: int | None
) -> Path:
    """Run (or skip) the base stage; returns the base model file."""
    if model is not None:
        path = Path(model).resolve()
        read_card(path)  # an autoguide model file, or a clear error naming it
        run_stage(folder, STAGE, {"model": str(path), "sha256": file_sha256(path)}, lambda: ([], {"model": str(path)}))
        return path
    if run is None:
        raise ValueError(
            "base: set base=<model file> or base_run=<training run folder> (its post-hoc EMA is reconstructed)"
        )
    index = run.phema / "index.json"
    if not index.is_file():
        raise FileNotFoundError(f"base_run={run.folder}: no post-hoc EMA index {index}; give base=<model file> instead")
    spec: dict[str, Any] = {
        "run": str(run.folder),
        "phema_index_sha256": file_sha256(index),
        "ema_std": float(ema_std),
        "at_nimg": at_nimg,
    }

    def work() -> tuple[list[Path], dict[str, Any]]:
        (path,) = PosthocEMA(run.phema).write([float(ema_std)], at_nimg, out_dir=folder)
        return [path], {"model": path.name}

    record = run_whole_stage(folder, STAGE, spec, work)
    return folder / record["info"]["model"]
