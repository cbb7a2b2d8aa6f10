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

from autoguide.apps.common import evaluation
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.apps.sampling_configs import SearchNode, SweepConfig, read_config
from autoguide.core.typed_settings import ConfigError, plain
from autoguide.ema.cache import ReconstructionCache
from autoguide.eval.evaluator import lower_is_better
from autoguide.eval.guide_search import GuideSearch, finish_search
from autoguide.eval.search import finished, open_study, run_worker
from autoguide.eval.search_space import SearchSpace
from autoguide.eval.sweep import SETTING_KEYS, run_sweep, sweep_term, term_option_keys
from autoguide.io import write_text_atomic
from autoguide.runtime.claim import FolderBusy, claim_folder
from autoguide.runtime.process import resolve_device
from autoguide.sample.seeds import format_seeds, parse_seeds

WORKER_KEYS = ("worker", "storage", "heartbeat_s", "lease_s", "max_retry", "cache")  # may differ between workers
REPORT_WAIT_S = 3600.0


def study_config(settings: SweepConfig, search: SearchNode) -> dict[str, Any]:
    """What every worker of one study must agree on (the study's fingerprint): the models,
    grid, guidance, seeds, sampling and metrics, and the search less its ``WORKER_KEYS``."""
    return {
        "main": plain(settings.main),
        "guides": plain(settings.guides),
        "grid": plain(settings.grid),
        "guidance": settings.guidance_settings.to_dict(),
        "select": settings.select,
        "seeds": format_seeds(settings.seeds),
        "class_labels": plain(settings.class_labels),
        "sampler": plain(settings.sampler),
        "metrics": plain(settings.metrics_settings),
        "precision": settings.precision,
        "max_error": settings.reconstruct.max_error,
        "search": {k: v for k, v in plain(search).items() if k not in WORKER_KEYS},
    }


def run_search(settings: SweepConfig, search_node: SearchNode, cfg: DictConfig) -> dict[str, Any] | None:
    """One worker of the search; the best record once the study is finished, else ``None``."""
    out = Path(settings.output.dir)
    sweep = settings.sweep_settings()
    guidance = settings.guidance_settings
    space = SearchSpace.from_config(search_node.space, term_option_keys(sweep_term(guidance)))
    measure = evaluation(settings, resolve_device(settings.device))
    if sweep.select not in measure.metric_names():
        raise ConfigError(f"select={sweep.select!r} is not measured here; the metrics are {measure.metric_names()}")
    search = search_node.settings(len(measure.plan.seeds), settings.output.dir)
    max_gb = search_node.cache.max_gb
    cache = ReconstructionCache(search_node.cache.dir, None if max_gb is None else int(max_gb * 2**30))
    guide_search = GuideSearch(sweep, guidance, space, cache, measure)
    given = search_node.holdout_seeds
    try:
        holdout = measure.plan.set_seeds(1) if given is None else parse_seeds(given)
    except ValueError as err:
        raise ConfigError(f"search.holdout_seeds: {err}") from None
    minimize = lower_is_better(sweep.select)
    study = open_study(search, study_config(settings, search_node), minimize, out)
    write_text_atomic(out / f"sweep-worker{search.worker}.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    ran = run_worker(study, space, guide_search.measure, search, out)
    if not finished(study):
        print(json.dumps({"trials_here": ran, "study": search.study, "finished": False}))
        return None
    with claim_folder(out, role="report", wait_s=REPORT_WAIT_S):
        best = finish_search(study, guide_search, search, minimize, holdout, out)
    summary = best and {k: best[k] for k in ("trial", "setting", "search", "holdout")}
    print(json.dumps({"trials_here": ran, "best": summary, "json": str(out / "best.json")}))
    return best


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Evaluate every grid point of ``cfg`` (``conf/sweep.yaml``) and return the best row (by
    ``select``); with ``search`` set, run one worker of the search (``run_search``)."""
    settings = read_config(SweepConfig, cfg)
    if settings.search is not None:
        return run_search(settings, settings.search, cfg)
    sweep = settings.sweep_settings()
    out = Path(settings.output.dir)
    write_text_atomic(out / "sweep.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    measure = evaluation(settings, resolve_device(settings.device))
    best = run_sweep(sweep, settings.guidance_settings, measure, out)
    print(json.dumps({"best": {k: best[k] for k in [*SETTING_KEYS, sweep.select]}, "csv": str(out / "sweep.csv")}))
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
