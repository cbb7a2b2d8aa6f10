"""``autoguide-sweep``: evaluate a grid of autoguidance settings and name the best one (Hydra
app, ``conf/eval/sweep.yaml``).

Axes: guidance weight, main EMA std, guide EMA std, guide run ("size") x guide time, and the
guidance interval. Post-hoc EMAs are built once per (run, std, nimg) and then reused
(``autoguide.eval.ema_cache``). Settings without an active guidance term (weight 1) give the
same samples whatever the guide, so they are evaluated once per main model.

Outputs in ``output.dir``: ``sweep.csv`` (one row per setting, rewritten after each one),
``weight.png`` (metric vs weight per guide), ``ema.png`` (metric over main x guide EMA std),
``best.json`` (the best row by ``select``) and ``sweep.yaml`` (the resolved config).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoguide.eval.app import run_app
from autoguide.eval.ema_cache import ema_models
from autoguide.eval.evaluate import evaluate_model, json_text, plain
from autoguide.eval.evaluator import Evaluator, check_model, metric_names
from autoguide.eval.sweep_plots import best_row, plot_ema, plot_weight
from autoguide.io import write_text_atomic
from autoguide.sample.config import build_guidance
from autoguide.sample.distributed import rank_from_env
from autoguide.sample.generate import ModelLoader, resolve_device

log = logging.getLogger(__name__)

SETTING_KEYS = ["main_std", "main_nimg", "guide", "guide_std", "guide_nimg", "weight", "interval_lo", "interval_hi"]
FILE_KEYS = ["main_model", "guide_model", "seconds"]


def _list(value: Any) -> list:
    """A config list as a Python list; a single value as a one-element list."""
    return list(plain(value)) if OmegaConf.is_list(value) else [value]


def guide_axis(cfg: DictConfig) -> list[tuple[str, int | None, dict[float, Path]]]:
    """``[(label, nimg, {guide std: model file})]`` for every guide run x time; one entry
    ``(guidance kind, None, {None: None})`` when no guide runs are given."""
    runs = _list(cfg.guides.runs) if cfg.guides.runs is not None else []
    if not runs:
        return [(str(cfg.guidance.kind), None, {None: None})]
    if "model" not in cfg.guidance:
        raise ValueError(f"guides.runs is set, but guidance kind={cfg.guidance.kind} takes no guide model; use guidance=autoguidance")
    axis = []
    for run, when in itertools.product(runs, _list(cfg.guides.times)):
        nimg, files = ema_models(run, when, _list(cfg.grid.guide_std), float(cfg.reconstruct.max_error), int(cfg.reconstruct.batch))
        axis.append((f"{Path(run).name}@{nimg}", nimg, files))
    return axis


def guidance_config(cfg: DictConfig, weight: float, interval: Sequence[float] | None, guide: Path | None) -> dict[str, Any]:
    """The configured guidance term with this grid point's weight, interval and guide model."""
    term = plain(cfg.guidance)
    if "weight" not in term or "interval" not in term:
        raise ValueError(f"guidance kind={term.get('kind')} has no weight/interval to sweep")
    term.update(weight=float(weight), interval=None if interval is None else [float(v) for v in interval])
    if guide is not None:
        term["model"] = str(guide)
    return term


def write_csv(path: Path, rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> None:
    """All rows so far as CSV (atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*SETTING_KEYS, *metrics, *FILE_KEYS])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every grid point; returns the best row (by ``cfg.select``)."""
    device = resolve_device(str(cfg.device), rank_from_env())
    metrics = plain(cfg.metrics)
    names, select = metric_names(metrics), str(cfg.select)
    if select not in names:
        raise ValueError(f"select={select!r} is not measured here; the metrics are {names}")
    main_nimg, main_models = ema_models(cfg.main.run, cfg.main.time, _list(cfg.grid.main_std), float(cfg.reconstruct.max_error), int(cfg.reconstruct.batch))
    guides = guide_axis(cfg)
    out = Path(cfg.output.dir)
    write_text_atomic(out / "sweep.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    rows: list[dict[str, Any]] = []
    evaluator: Evaluator | None = None
    for main_std, main_file in main_models.items():
        load = ModelLoader(device)
        net = load(str(main_file))
        check_model(net, metrics)
        evaluator = evaluator or Evaluator(metrics, plain(cfg.extractors), device)
        unguided: dict[str, float] | None = None
        for (label, guide_nimg, guide_files), interval, weight in itertools.product(guides, _list(cfg.grid.interval), _list(cfg.grid.weight)):
            for guide_std, guide_file in guide_files.items():
                started = time.time()
                terms = build_guidance(guidance_config(cfg, weight, interval, guide_file), load)
                if terms or unguided is None:
                    values = evaluate_model(net, terms, cfg, evaluator, device)["metrics"]
                    unguided = unguided if terms else values
                else:
                    values = unguided
                rows.append({
                    "main_std": main_std, "main_nimg": main_nimg, "guide": label, "guide_std": guide_std,
                    "guide_nimg": guide_nimg, "weight": float(weight),
                    "interval_lo": None if interval is None else interval[0], "interval_hi": None if interval is None else interval[1],
                    **values, "main_model": str(main_file), "guide_model": None if guide_file is None else str(guide_file),
                    "seconds": round(time.time() - started, 2),
                })
                log.info("%s", {k: rows[-1][k] for k in [*SETTING_KEYS, select]})
                write_csv(out / "sweep.csv", rows, names)
    best = best_row(rows, select)
    plot_weight(out / "weight.png", rows, select)
    plot_ema(out / "ema.png", rows, select)
    write_text_atomic(out / "best.json", json_text({"select": select, **best}))
    print(json.dumps({"best": {k: best[k] for k in [*SETTING_KEYS, select]}, "csv": str(out / "sweep.csv")}))
    return dict(best)


def main() -> None:
    """Console entry point ``autoguide-sweep``."""
    run_app("sweep", run)


if __name__ == "__main__":
    main()
