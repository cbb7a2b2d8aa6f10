"""``autoguide-sweep``: evaluate a grid of guidance settings and name the best one
(``conf/sweep.yaml``; ``autoguide.eval.sweep``).

    autoguide-sweep main.run=runs/mnist-s 'guides.runs=[runs/mnist-xs-guide]' metrics=mnist \\
        'grid.weight=[1,1.5,2,2.5]' 'grid.main_std=[0.05,0.1]' 'grid.guide_std=[0.05,0.1]'
    autoguide-sweep main.model=models/img512-s-0.070.safetensors 'guides.runs=[runs/img512-xs-guide-for-imported]' ...

Writes ``sweep.csv``, ``weight.png``, ``ema.png``, ``best.json`` and ``sweep.yaml`` (the
resolved config) into ``output.dir``; prints the best row.

``search=tpe`` (``gp``, ``random``) searches ranges instead (``autoguide.eval.search``): this
process is one worker of the study in ``search.storage``; the worker that sees the study
finished writes ``trials.csv``, the plots and ``best.json`` (the best re-measured on held-out
seeds) and prints it::

    autoguide-sweep search=tpe main.run=runs/toy-main 'guides.runs=[runs/toy-guide]' metrics=toy2d select=toy_logp \\
        seeds=0-1999 search.budget=20000 'search.space.weight={low:1,high:4}' 'search.space.guide_time={low:0.1,high:1}'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoguide.apps.common import evaluation, plain
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.core.typed_settings import ConfigError
from autoguide.ema.cache import ReconstructionCache
from autoguide.eval.evaluator import lower_is_better
from autoguide.eval.guide_search import GuideSearch, finish_search
from autoguide.eval.search import SearchSettings, finished, open_study, run_worker
from autoguide.eval.search_space import SearchSpace
from autoguide.eval.sweep import (
    SETTING_KEYS,
    SweepSettings,
    run_sweep,
    term_option_keys,
)
from autoguide.io import write_text_atomic
from autoguide.runtime.claim import FolderBusy, claim_folder
from autoguide.runtime.process import resolve_device
from autoguide.sample.seeds import parse_seeds

STUDY_KEYS = (
    "main",
    "guides",
    "grid",
    "guidance",
    "select",
    "seeds",
    "class_labels",
    "sampler",
    "metrics",
    "precision",
)
WORKER_KEYS = ("worker", "storage", "heartbeat_s", "lease_s", "max_retry", "cache")  # may differ between workers
REPORT_WAIT_S = 3600.0


def _items(value: Any) -> tuple:
    """A config list as a tuple; a single value as a one-element tuple."""
    value = plain(value)
    return tuple(value) if isinstance(value, list) else (value,)


def sweep_settings(cfg: DictConfig) -> SweepSettings:
    """The ``main``, ``guides``, ``grid``, ``select`` and ``reconstruct`` nodes."""
    return SweepSettings(
        main_run=None if cfg.main.run is None else str(cfg.main.run),
        main_time=plain(cfg.main.time),
        main_model=None if cfg.main.get("model") is None else str(cfg.main.model),
        guide_runs=tuple(str(r) for r in _items(cfg.guides.runs or [])),
        guide_times=_items(cfg.guides.times),
        weight=_items(cfg.grid.weight),
        main_std=_items(cfg.grid.main_std),
        guide_std=_items(cfg.grid.guide_std),
        interval=tuple(None if i is None else tuple(i) for i in _items(cfg.grid.interval)),
        term=tuple((str(key), _items(values)) for key, values in (plain(cfg.grid.get("term")) or {}).items()),
        select=str(cfg.select),
        max_error=float(cfg.reconstruct.max_error),
        batch=int(cfg.reconstruct.batch),
    )


def search_settings(cfg: DictConfig, images: int) -> SearchSettings:
    """The ``search`` node; ``images``: the number of seeds (the last rung)."""
    node = cfg.search
    if node.budget is None:
        raise ConfigError("search.budget: give the study's budget in image evaluations (every worker together)")
    storage = node.storage or f"sqlite:///{Path(cfg.output.dir).expanduser().resolve() / 'study.db'}"
    return SearchSettings(
        sampler=str(node.sampler),
        pruner=str(node.pruner),
        seed=int(node.seed),
        worker=int(node.worker),
        study=str(node.study),
        storage=str(storage),
        budget=node.budget,
        min_images=node.rungs.min_images,
        factor=node.rungs.factor,
        max_images=images,
        startup_trials=int(node.startup_trials),
        heartbeat_s=float(node.heartbeat_s),
        lease_s=float(node.lease_s),
        max_retry=int(node.max_retry),
    )


def study_config(cfg: DictConfig) -> dict[str, Any]:
    """What every worker of one study must agree on (the study's fingerprint)."""
    config = {key: plain(cfg.get(key)) for key in STUDY_KEYS}
    config["max_error"] = float(cfg.reconstruct.max_error)
    config["search"] = {k: v for k, v in plain(cfg.search).items() if k not in WORKER_KEYS}
    return config


def run_search(cfg: DictConfig) -> dict[str, Any] | None:
    """One worker of the search; the best record once the study is finished, else ``None``."""
    out = Path(cfg.output.dir)
    sweep = sweep_settings(cfg)
    term = plain(cfg.guidance)
    space = SearchSpace.from_config(plain(cfg.search.space), term_option_keys(term))
    measure = evaluation(cfg, resolve_device(str(cfg.device)))
    if sweep.select not in measure.metric_names():
        raise ConfigError(f"select={sweep.select!r} is not measured here; the metrics are {measure.metric_names()}")
    settings = search_settings(cfg, len(measure.plan.seeds))
    max_gb = cfg.search.cache.max_gb
    cache = ReconstructionCache(cfg.search.cache.dir, None if max_gb is None else int(float(max_gb) * 2**30))
    search = GuideSearch(sweep, term, space, cache, measure)
    given = plain(cfg.search.holdout_seeds)
    try:
        holdout = measure.plan.set_seeds(1) if given is None else parse_seeds(given)
    except ValueError as err:
        raise ConfigError(f"search.holdout_seeds: {err}") from None
    minimize = lower_is_better(sweep.select)
    study = open_study(settings, study_config(cfg), minimize, out)
    write_text_atomic(out / f"sweep-worker{settings.worker}.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    ran = run_worker(study, space, search.measure, settings, out)
    if not finished(study):
        print(json.dumps({"trials_here": ran, "study": settings.study, "finished": False}))
        return None
    with claim_folder(out, role="report", wait_s=REPORT_WAIT_S):
        best = finish_search(study, search, settings, minimize, holdout, out)
    summary = best and {k: best[k] for k in ("trial", "setting", "search", "holdout")}
    print(json.dumps({"trials_here": ran, "best": summary, "json": str(out / "best.json")}))
    return best


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Evaluate every grid point and return the best row (by ``cfg.select``); with ``search``
    set, run one worker of the search (``run_search``)."""
    if cfg.get("search") is not None:
        return run_search(cfg)
    settings = sweep_settings(cfg)
    out = Path(cfg.output.dir)
    write_text_atomic(out / "sweep.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    best = run_sweep(settings, plain(cfg.guidance), evaluation(cfg, resolve_device(str(cfg.device))), out)
    print(json.dumps({"best": {k: best[k] for k in [*SETTING_KEYS, settings.select]}, "csv": str(out / "sweep.csv")}))
    return best


def main() -> None:
    """Console entry point ``autoguide-sweep``."""
    run_hydra_app(
        "sweep",
        run,
        errors={
            ValueError: "autoguide-sweep: error",
            FileNotFoundError: "autoguide-sweep: error",
            FolderBusy: "autoguide-sweep: error",
        },
    )


if __name__ == "__main__":
    main()
