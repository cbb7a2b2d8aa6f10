"""The guidance search (``autoguide-sweep search=tpe``): the sweep's settings over ranges
instead of lists, measured by the sweep's evaluation (docs/design.md, "Guidance search").

A trial's settings (``autoguide.eval.search_space``) become models and a guidance term as in
the grid (``autoguide.eval.sweep``): the main model is the main run's post-hoc EMA ``main_std``
(or the one ``main_model`` file), the guide the guide run's EMA ``guide_std`` at
``guide_time``, both from the shared ``ReconstructionCache``; the term gets ``weight``, the
interval ``(sigma_lo, sigma_hi]`` and the term options (``guidance_config``). A knob that is not
searched takes the grid's value, which must then be a single one. Rung ``k`` measures the first
``n_k`` seeds of the evaluation (``autoguide.eval.search``); the best trial is measured once
more on held-out seeds (default: the evaluation's seeds shifted past their maximum, the sweep's
second seed set) at the full count.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoguide.core.typed_settings import ConfigError
from autoguide.ema.cache import ReconstructionCache
from autoguide.ema.posthoc import PosthocEMA
from autoguide.eval.evaluate import Evaluation
from autoguide.eval.search import Infeasible, SearchSettings, best_trials, spent_images
from autoguide.eval.search_report import plot_study, write_trials
from autoguide.eval.search_space import SearchSpace
from autoguide.eval.sweep import SweepSettings, guidance_config, sweep_term, variant_label
from autoguide.io import file_sha256, read_card, write_json_atomic
from autoguide.runtime.process import ModelLoader
from autoguide.sample.guidance_spec import MODEL_FIELDS, GuidanceSettings, build_guidance
from autoguide.sample.seeds import format_seeds

HOLDOUT_ATTR = "holdout"


def _single(values: Sequence[Any], key: str, knob: str) -> Any:
    if len(values) != 1:
        raise ConfigError(
            f"{key} has {len(values)} values; a search takes one fixed value, or a range search.space.{knob}"
        )
    return values[0]


@dataclass(frozen=True)
class Point:
    """One setting of the search: EMA stds, guide time, weight, interval and term options."""

    main_std: float | None
    guide_std: float | None
    guide_time: Any
    weight: float
    interval: tuple[float, float] | None
    variant: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """The setting as the sweep's columns."""
        return {
            "main_std": self.main_std,
            "guide_std": self.guide_std,
            "guide_time": self.guide_time,
            "weight": self.weight,
            "interval_lo": None if self.interval is None else self.interval[0],
            "interval_hi": None if self.interval is None else self.interval[1],
            "variant": variant_label(self.variant),
        }


class GuideSearch:
    """Measures search settings with ``evaluation``: models of the sweep's runs (``sweep``),
    rebuilt through ``cache``, guided by the one term of ``guidance`` (``sweep_term``)."""

    def __init__(
        self,
        sweep: SweepSettings,
        guidance: GuidanceSettings,
        space: SearchSpace,
        cache: ReconstructionCache,
        evaluation: Evaluation,
    ) -> None:
        self.sweep, self.term, self.space, self.cache, self.evaluation = (
            sweep,
            sweep_term(guidance),
            space,
            cache,
            evaluation,
        )
        names = set(space.names)
        if len(sweep.guide_runs) > 1:
            raise ConfigError(
                f"guides.runs: a search takes one guide run, got {len(sweep.guide_runs)}; "
                "search each in a study of its own"
            )
        if sweep.guide_runs and self.term.kind not in MODEL_FIELDS:
            raise ConfigError(f"guides.runs is set, but guidance kind={self.term.kind} takes no guide model")
        if not sweep.guide_runs and names & {"guide_std", "guide_time"}:
            raise ConfigError("search.space.guide_std/guide_time: no guide run to search (set guides.runs)")
        self.fixed = {
            "main_std": None
            if "main_std" in names or sweep.main_model
            else _single(sweep.main_std, "grid.main_std", "main_std"),
            "guide_std": None if "guide_std" in names else _single(sweep.guide_std, "grid.guide_std", "guide_std"),
            "guide_time": None if "guide_time" in names else _single(sweep.guide_times, "guides.times", "guide_time"),
            "weight": None if "weight" in names else _single(sweep.weight, "grid.weight", "weight"),
            "interval": None
            if names & {"sigma_lo", "sigma_hi"}
            else _single(sweep.interval, "grid.interval", "sigma_lo"),
        }
        if sweep.term:
            raise ConfigError("grid.term: a search takes its term options as ranges or choices under search.space.term")

    def point(self, params: Mapping[str, Any]) -> Point:
        """The setting a trial's (decoded) ``params`` mean."""
        interval = self.fixed["interval"]
        if "sigma_lo" in params or "sigma_hi" in params:
            interval = (float(params.get("sigma_lo", 0.0)), float(params.get("sigma_hi", math.inf)))
        return Point(
            main_std=params.get("main_std", self.fixed["main_std"]),
            guide_std=params.get("guide_std", self.fixed["guide_std"]),
            guide_time=params.get("guide_time", self.fixed["guide_time"]),
            weight=float(params.get("weight", self.fixed["weight"])),
            interval=None if interval is None else tuple(interval),
            variant={k.removeprefix("term."): v for k, v in params.items() if k.startswith("term.")},
        )

    def models(self, point: Point) -> tuple[Path, Path | None]:
        """The main and guide model files of ``point`` (from the cache)."""
        s = self.sweep
        if s.main_model is not None:
            main = Path(s.main_model)
        else:  # a main run (SweepSettings holds one of the two), whose std is searched or fixed
            assert s.main_run is not None and point.main_std is not None
            main = self.cache.get(PosthocEMA(s.main_run), point.main_std, s.main_time, s.max_error, s.batch)
        guide = None
        if s.guide_runs:
            assert point.guide_std is not None
            guide = self.cache.get(PosthocEMA(s.guide_runs[0]), point.guide_std, point.guide_time, s.max_error, s.batch)
        return main, guide

    def metrics(
        self, point: Point, seeds: Sequence[int], models: tuple[Path, Path | None] | None = None
    ) -> dict[str, float]:
        """Every metric of ``point`` measured on ``seeds`` (with its ``models`` when known)."""
        main, guide = models or self.models(point)
        load = ModelLoader(self.evaluation.device)
        terms = build_guidance(guidance_config(self.term, point.weight, point.interval, guide, point.variant), load)
        run = copy.copy(self.evaluation)
        run.plan = dataclasses.replace(self.evaluation.plan, seeds=tuple(seeds), seed_sets=1)
        values = run(load(str(main)), terms)["metrics"]
        self.evaluation.__dict__["evaluator"] = run.evaluator  # one evaluator (reference statistics) for every rung
        return values

    def measure(self, params: Mapping[str, Any], images: int) -> float:
        """The selected metric of a trial's settings on the first ``images`` seeds (one rung);
        ``Infeasible`` for EMAs the snapshots cannot represent."""
        point = self.point(params)
        try:
            models = self.models(point)
        except ValueError as err:
            raise Infeasible(str(err)) from None
        return self.metrics(point, self.evaluation.plan.seeds[:images], models)[self.sweep.select]


def model_record(path: Path | None) -> dict[str, Any] | None:
    """``{file, sha256, nimg, ema_std}`` of a model file."""
    if path is None:
        return None
    card = read_card(path)
    return {"file": str(path), "sha256": file_sha256(path), "nimg": card.get("nimg"), "ema_std": card.get("ema_std")}


def finish_search(
    study: Any,
    search: GuideSearch,
    settings: SearchSettings,
    minimize: bool,
    holdout_seeds: Sequence[int],
    out_dir: Path,
) -> dict[str, Any] | None:
    """``trials.csv``, the plots and ``best.json`` of a finished study: the best complete trial
    re-measured on ``holdout_seeds`` (once per study: the result is kept in the study). Returns
    the best record, ``None`` when no trial completed."""
    write_trials(study, settings.rungs, out_dir)
    top = best_trials(study, minimize)
    if not top:
        return None
    plot_study(study, out_dir)
    trial = top[0]
    params = search.space.decode(trial.params)
    point = search.point(params)
    kept = study.user_attrs.get(HOLDOUT_ATTR)
    if kept is None or kept.get("trial") != trial.number:
        kept = {"trial": trial.number, "metrics": search.metrics(point, holdout_seeds)}
        study.set_user_attr(HOLDOUT_ATTR, kept)
    main, guide = search.models(point)
    states = collections.Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    best = {
        "select": search.sweep.select,
        "study": settings.study,
        "storage": settings.storage,
        "trial": trial.number,
        "setting": point.record(),
        "params": params,
        "search": {
            "value": trial.value,
            "images": settings.max_images,
            "seeds": format_seeds(search.evaluation.plan.seeds),
            "rungs": {str(n): v for n, v in sorted(trial.intermediate_values.items())},
        },
        "holdout": {
            "value": kept["metrics"][search.sweep.select],
            "metrics": kept["metrics"],
            "images": len(holdout_seeds),
            "seeds": format_seeds(holdout_seeds),
        },
        "models": {"main": model_record(main), "guide": model_record(guide)},
        "trials": dict(states),
        "images_spent": spent_images(study),
        "budget": settings.budget,
        "rungs": list(settings.rungs),
        "cache": {"dir": str(search.cache.folder), "hits": search.cache.hits, "builds": search.cache.builds},
    }
    write_json_atomic(out_dir / "best.json", best)
    return best
