"""Guidance sweeps: evaluate a grid of settings and name the best one.

Axes: guidance weight, main EMA std, guide EMA std, guide run ("size") x guide time, the
guidance interval, and ``term``: any other options of the guidance term, each with its list of
values (``{p: [0.1, 0.3], apg: [null, {eta: 0.0}], blocks: [[block0], [block1]]}``: rule
parameters, which blocks, dropout rate ...), swept as their product (the ``variant`` column).
A guide from the same run as the main model (a shorter EMA, an earlier snapshot) is a guide run
equal to the main run. The main model is a run's post-hoc EMAs or one fixed file (``main_model``,
e.g. an imported EDM2 release whose guide is being chosen). Post-hoc EMAs are rebuilt once per
(run, std, nimg) and then reused from ``<run>/reconstructed`` (``autoguide.ema.cache``).
Settings without an active guidance term (``autoguide.sample.guidance.changes_output``: weight 1)
give the same samples whatever the guide, so they are evaluated once per main model.

Outputs in the output folder: ``sweep.csv`` (one row per setting, rewritten after each one),
``weight.png`` (metric vs weight per guide), ``ema.png`` (metric over main x guide EMA std) and
``best.json`` (the best row by ``select``).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoguide.core.typed_settings import ConfigError
from autoguide.ema.cache import ReconstructionCache
from autoguide.ema.posthoc import DEFAULT_MAX_ERROR, EmaTime, PosthocEMA
from autoguide.eval.evaluate import Evaluation
from autoguide.eval.sweep_plots import best_row, plot_ema, plot_weight
from autoguide.io import read_card, write_csv_atomic, write_json_atomic
from autoguide.runtime.process import ModelLoader
from autoguide.sample.guidance_spec import MODEL_FIELDS, GuidanceSettings, TermSettings, build_guidance, term_keys

log = logging.getLogger(__name__)

SETTING_KEYS = [
    "main_std",
    "main_nimg",
    "guide",
    "guide_std",
    "guide_nimg",
    "variant",
    "weight",
    "interval_lo",
    "interval_hi",
]
OWN_AXES = ("kind", "weight", "interval", "model")  # term keys with their own axis (or none)
FILE_KEYS = ["main_model", "guide_model", "seconds"]


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """The grid: the main run (``main_run`` at ``main_time``) and its EMA stds, or one main
    model file (``main_model``); the guide runs at every guide time and their EMA stds, the
    weights and intervals; ``select`` names the metric that picks the best row;
    ``max_error``/``batch`` go to the EMA reconstruction; ``term``: ``(key, values)`` pairs of
    other term options swept as a product."""

    main_run: str | None = None
    main_model: str | None = None
    main_time: EmaTime = None
    guide_runs: tuple[str, ...] = ()
    guide_times: tuple[EmaTime, ...] = (None,)
    weight: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0)
    main_std: tuple[float, ...] = (0.1,)
    guide_std: tuple[float, ...] = (0.1,)
    interval: tuple[tuple[float, float] | None, ...] = (None,)
    term: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    select: str
    max_error: float = DEFAULT_MAX_ERROR
    batch: int = 8

    def __post_init__(self) -> None:
        if (self.main_run is None) == (self.main_model is None):
            raise ConfigError("main: set exactly one of main.run (a training run) and main.model (a model file)")


def main_axis(settings: SweepSettings) -> tuple[int | None, dict[float | None, Path]]:
    """``(nimg, {main EMA std: model file})``: the run's post-hoc EMAs, or the one main file."""
    if settings.main_model is None:  # then main_run is set (SweepSettings)
        ema = PosthocEMA(str(settings.main_run))
        nimg, files = ReconstructionCache(ema.default_dir).files(
            ema, settings.main_std, settings.main_time, settings.max_error, settings.batch
        )
        return nimg, dict(files.items())
    card = read_card(settings.main_model)
    return card.get("nimg"), {card.get("ema_std"): Path(settings.main_model)}


def sweep_term(guidance: GuidanceSettings) -> TermSettings:
    """The one guidance term a sweep or search varies; ``ConfigError`` for several terms or
    none, and for a term without a weight and an interval."""
    if guidance.several or len(guidance.terms) != 1:
        raise ConfigError("guidance: a sweep varies one guidance term; give a single term (e.g. guidance=autoguidance)")
    term = guidance.terms[0]
    if term.kind == "none" or "omega" in term.options:
        raise ConfigError(f"guidance kind={term.kind} has no weight/interval to sweep")
    return term


def term_variants(settings: SweepSettings, term: TermSettings) -> list[dict[str, Any]]:
    """Every combination of the ``term`` axis values (one empty variant without that axis);
    names a key the term does not take, or one with its own axis."""
    valid = term_option_keys(term)
    for key, values in settings.term:
        if key not in valid:
            raise ConfigError(
                f"grid.term.{key}: not an option to sweep for guidance kind={term.kind}; valid: {valid} "
                f"(weight, interval and the guide have their own grid axes)"
            )
        if not values:
            raise ConfigError(f"grid.term.{key}: give at least one value")
    return option_product(dict(settings.term))


def term_option_keys(term: TermSettings) -> list[str]:
    """The options of the guidance ``term`` that a sweep or search may vary (all its keys but
    those with their own axis: kind, weight, interval, the guide model)."""
    return [k for k in term_keys(term.kind) if k not in OWN_AXES] if term.kind != "none" else []


def option_product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values of ``axes`` (``{key: values}``), in ``itertools.product``
    order; ``[{}]`` for no axes."""
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def variant_label(variant: Mapping[str, Any]) -> str:
    """``key=value`` pairs of a term variant, values as JSON (``""`` for none)."""
    return " ".join(f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in variant.items())


def guidance_config(
    term: TermSettings,
    weight: float,
    interval: Sequence[float] | None,
    guide: Path | None,
    variant: Mapping[str, Any],
) -> GuidanceSettings:
    """The guidance term ``term`` with this grid point's weight, interval, guide model and
    term variant."""
    options = {
        **term.options,
        **variant,
        "weight": float(weight),
        "interval": None if interval is None else [float(v) for v in interval],
    }
    model = term.model if guide is None else str(guide)
    return GuidanceSettings((TermSettings(kind=term.kind, options=options, model=model, where=term.where),))


def guide_axis(
    settings: SweepSettings, term: TermSettings
) -> list[tuple[str, int | None, dict[float | None, Path | None]]]:
    """``[(label, nimg, {guide std: model file})]`` for every guide run x time; one entry
    ``(guidance kind, None, {None: None})`` when no guide runs are given."""
    if not settings.guide_runs:
        return [(term.kind, None, {None: None})]
    if term.kind not in MODEL_FIELDS:
        raise ConfigError(
            f"guides.runs is set, but guidance kind={term.kind} takes no guide model; use guidance=autoguidance"
        )
    axis: list[tuple[str, int | None, dict[float | None, Path | None]]] = []
    for run, when in itertools.product(settings.guide_runs, settings.guide_times):
        ema = PosthocEMA(run)
        nimg, files = ReconstructionCache(ema.default_dir).files(
            ema, settings.guide_std, when, settings.max_error, settings.batch
        )
        axis.append((f"{Path(run).name}@{nimg}", nimg, dict(files.items())))
    return axis


def run_sweep(
    settings: SweepSettings, guidance: GuidanceSettings, evaluation: Evaluation, out_dir: Path
) -> dict[str, Any]:
    """Evaluate every grid point of ``settings`` with the one term of ``guidance`` (its weight,
    interval and guide model set per point); write the outputs; return the best row."""
    term = sweep_term(guidance)
    names = evaluation.metric_names()
    if settings.select not in names:
        raise ConfigError(f"select={settings.select!r} is not measured here; the metrics are {names}")
    main_nimg, main_models = main_axis(settings)
    guides = guide_axis(settings, term)
    variants = term_variants(settings, term)
    rows: list[dict[str, Any]] = []
    for main_std, main_file in main_models.items():
        load = ModelLoader(evaluation.device)  # per main model: only its models stay in memory
        net = load(str(main_file))
        unguided: dict[str, float] | None = None
        grid = itertools.product(guides, variants, settings.interval, settings.weight)
        for (label, guide_nimg, guide_files), variant, interval, weight in grid:
            for guide_std, guide_file in guide_files.items():
                started = time.time()
                terms = build_guidance(guidance_config(term, weight, interval, guide_file, variant), load)
                if terms or unguided is None:
                    values = evaluation(net, terms)["metrics"]
                    unguided = unguided if terms else values
                else:
                    values = unguided
                rows.append(
                    {
                        "main_std": main_std,
                        "main_nimg": main_nimg,
                        "guide": label,
                        "guide_std": guide_std,
                        "guide_nimg": guide_nimg,
                        "variant": variant_label(variant),
                        "weight": float(weight),
                        "interval_lo": None if interval is None else interval[0],
                        "interval_hi": None if interval is None else interval[1],
                        **values,
                        "main_model": str(main_file),
                        "guide_model": None if guide_file is None else str(guide_file),
                        "seconds": round(time.time() - started, 2),
                    }
                )
                log.info("%s", {k: rows[-1][k] for k in [*SETTING_KEYS, settings.select]})
                write_csv_atomic(out_dir / "sweep.csv", rows, [*SETTING_KEYS, *names, *FILE_KEYS])
    best = best_row(rows, settings.select)
    plot_weight(out_dir / "weight.png", rows, settings.select)
    plot_ema(out_dir / "ema.png", rows, settings.select)
    write_json_atomic(out_dir / "best.json", {"select": settings.select, **best})
    return dict(best)
