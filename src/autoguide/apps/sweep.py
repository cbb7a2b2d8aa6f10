"""``autoguide-sweep``: evaluate a grid of guidance settings and name the best one
(``conf/sweep.yaml``; ``autoguide.eval.sweep``).

    autoguide-sweep main.run=runs/mnist-s 'guides.runs=[runs/mnist-xs-guide]' metrics=mnist \\
        'grid.weight=[1,1.5,2,2.5]' 'grid.main_std=[0.05,0.1]' 'grid.guide_std=[0.05,0.1]'
    autoguide-sweep main.model=models/img512-s-0.070.safetensors 'guides.runs=[runs/img512-xs-guide-for-imported]' ...

Writes ``sweep.csv``, ``weight.png``, ``ema.png``, ``best.json`` and ``sweep.yaml`` (the
resolved config) into ``output.dir``; prints the best row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoguide.apps.common import evaluation, plain
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.claim import FolderBusy
from autoguide.eval.sweep import SETTING_KEYS, SweepSettings, run_sweep
from autoguide.io import write_text_atomic
from autoguide.runtime import resolve_device


def _items(value: Any) -> tuple:
    """A config list as a tuple; a single value as a one-element tuple."""
    value = plain(value)
    return tuple(value) if isinstance(value, list) else (value,)


def sweep_settings(cfg: DictConfig) -> SweepSettings:
    """The ``main``, ``guides``, ``grid``, ``select`` and ``reconstruct`` nodes."""
    return SweepSettings(
        main_run=None if cfg.main.run is None else str(cfg.main.run), main_time=plain(cfg.main.time),
        main_model=None if cfg.main.get("model") is None else str(cfg.main.model),
        guide_runs=tuple(str(r) for r in _items(cfg.guides.runs or [])), guide_times=_items(cfg.guides.times),
        weight=_items(cfg.grid.weight), main_std=_items(cfg.grid.main_std), guide_std=_items(cfg.grid.guide_std),
        interval=tuple(None if i is None else tuple(i) for i in _items(cfg.grid.interval)),
        term=tuple((str(key), _items(values)) for key, values in (plain(cfg.grid.get("term")) or {}).items()),
        select=str(cfg.select), max_error=float(cfg.reconstruct.max_error), batch=int(cfg.reconstruct.batch),
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every grid point; returns the best row (by ``cfg.select``)."""
    settings = sweep_settings(cfg)
    out = Path(cfg.output.dir)
    write_text_atomic(out / "sweep.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    best = run_sweep(settings, plain(cfg.guidance), evaluation(cfg, resolve_device(str(cfg.device))), out)
    print(json.dumps({"best": {k: best[k] for k in [*SETTING_KEYS, settings.select]}, "csv": str(out / "sweep.csv")}))
    return best


def main() -> None:
    """Console entry point ``autoguide-sweep``."""
    run_hydra_app("sweep", run, errors={ValueError: "autoguide-sweep: error", FileNotFoundError: "autoguide-sweep: error", FolderBusy: "autoguide-sweep: error"})


if __name__ == "__main__":
    main()
