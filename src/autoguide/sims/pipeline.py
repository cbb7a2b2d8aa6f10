"""The SIMS loop (Alemohammad et al. 2024, "Self-Improving Diffusion Models with Synthetic
Data"): base -> synthesize -> retrain -> register, for one or more iterations.

Folder layout under ``out_dir``::

    base/                      the base model (or the record of the given file)
    iter-00/synthesize/        shards/*.tar, chunks/*.json, manifest.json
    iter-00/retrain/           a training run folder (config.yaml, checkpoints/, phema/, ...)
    iter-00/register/b{B}-std{s}/   negative.safetensors, weightspace-w*.safetensors, pair.json
    iter-01/...                next round: synthesized by iteration 0's negative (largest
                               budget, first register EMA std), fine-tuned from it
    summary.json               every pair made so far

Every stage folder carries ``spec.json`` and, once complete, ``stage.json``
(``autoguide.sims.records``): complete stages are skipped, a stage without a valid record
is redone (resuming from the pieces it recorded itself: finished chunks, checkpoints).
The pairs always have the original base model as their positive.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from autoguide.core.typed_settings import from_mapping
from autoguide.io import read_card, write_text_atomic
from autoguide.runtime.process import ModelLoader, resolve_device
from autoguide.sample.sampler_settings import GenerationSettings, SamplerSettings
from autoguide.sims.base import base_stage
from autoguide.sims.base_run import BaseRun, read_base_run
from autoguide.sims.register import NEGATIVE_NAME, pair_folder, register_stage
from autoguide.sims.retrain import RetrainSettings, budgets_from_mi, retrain_stage
from autoguide.sims.synthesize import MANIFEST_NAME, SHARD_DIR, SynthesisSettings, synthesize_stage

log = logging.getLogger(__name__)

STAGES = ("base", "synthesize", "retrain", "register")
SUMMARY_NAME = "summary.json"
SUMMARY_FORMAT = "autoguide-sims/1"


@dataclass(frozen=True)
class Layout:
    """Paths inside a SIMS folder."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    def iteration(self, k: int) -> Path:
        return self.root / f"iter-{k:02d}"

    def stage(self, k: int, name: str) -> Path:
        return self.iteration(k) / name


def _stop_point(cfg: Mapping[str, Any], iterations: int) -> tuple[int, int]:
    """``(iteration, stage index)`` after which to stop."""
    stage = cfg.get("stop_after", "register")
    if stage not in STAGES:
        raise ValueError(f"stop_after={stage!r}: expected one of {', '.join(STAGES)}")
    k = cfg.get("iteration")
    k = iterations - 1 if k is None else int(k)
    if not 0 <= k < iterations:
        raise ValueError(f"iteration={k}: expected 0 <= iteration < iterations={iterations}")
    return k, STAGES.index(stage)


class RealData:
    """The real training set, from ``real_data`` or the base run's ``data``; built on first use."""

    def __init__(self, cfg: Mapping[str, Any] | None, base_run: BaseRun | None) -> None:
        self._cfg = dict(cfg) if cfg is not None else None
        self._base_run = base_run

    @functools.cached_property
    def cfg(self) -> dict[str, Any] | None:
        """The dataset config (``name`` and that dataset's keys), or ``None`` if unknown."""
        if self._cfg is None and self._base_run is not None:
            return self._base_run.real_data()
        return self._cfg

    @functools.cached_property
    def dataset(self) -> Dataset:
        from autoguide.data.registry import build_dataset

        if self.cfg is None:
            raise ValueError(
                "the real training set is needed (synthesize.num_images=null or real_fraction > 0): set real_data=<dataset config> or base_run=<run folder>"
            )
        return build_dataset(self.cfg)


def synthesis_settings(cfg: Mapping[str, Any], real: RealData) -> SynthesisSettings:
    """The ``synthesize`` group as settings; ``num_images: null`` = the real set's size."""
    keys = ("real_fraction", "real_seed", "first_seed", "class_labels", "shard_size", "guidance")
    generation = GenerationSettings(
        sampler=from_mapping(SamplerSettings, cfg["sampler"], "synthesize.sampler"),
        batch_size=cfg["batch_size"],
        precision=cfg["precision"],
    )
    num = cfg.get("num_images")
    return SynthesisSettings(
        num_images=len(real.dataset) if num is None else int(num), generation=generation, **{k: cfg[k] for k in keys}
    )


def retrain_settings(cfg: Mapping[str, Any], base_run: BaseRun | None, base_nimg: int | None) -> RetrainSettings:
    """The ``retrain`` group and ``budget_mi`` as settings, with the default learning rate (the
    base run's final one) resolved."""
    retrain = cfg["retrain"]
    lr = retrain.get("lr")
    if lr is None:
        if base_run is None or base_nimg is None:
            raise ValueError(
                "retrain.lr=null takes the base run's final learning rate: set base_run=<run folder> (and a base with nimg in its card) or retrain.lr"
            )
        lr = base_run.final_learning_rate(base_nimg)
        log.info("retrain: learning rate %.6g (the base run's at nimg %d)", lr, base_nimg)
    return RetrainSettings(
        budgets=budgets_from_mi(cfg["budget_mi"]),
        lr=float(lr),
        lr_ref_batches=float(retrain["lr_ref_batches"]),
        lr_rampup_mi=float(retrain["lr_rampup_mi"]),
        ema_stds=tuple(float(s) for s in retrain["ema_stds"]),
        checkpoint_kimg=retrain.get("checkpoint_kimg"),
        overrides=tuple(retrain.get("overrides") or ()),
        launcher=tuple(retrain.get("launcher") or ()),
    )


def write_summary(layout: Layout, base: Path, iterations: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {"format": SUMMARY_FORMAT, "base": str(base), "iterations": iterations}
    write_text_atomic(layout.root / SUMMARY_NAME, json.dumps(summary, indent=1) + "\n")
    return summary


def run_sims(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """Run the configured SIMS stages (see ``conf/sims/sims.yaml``); returns the summary, or
    ``None`` when stopped early (``stop_after``) or when other array tasks still owe chunks."""
    layout = Layout(Path(cfg["out_dir"]).resolve())
    iterations = int(cfg["iterations"])
    if iterations < 1:
        raise ValueError(f"iterations={iterations}: expected at least 1")
    stop_iteration, stop_stage = _stop_point(cfg, iterations)
    base_run = read_base_run(cfg["base_run"]) if cfg.get("base_run") else None
    base = base_stage(layout.base, cfg.get("base"), base_run, float(cfg["base_ema_std"]), cfg.get("base_at_nimg"))
    if stop_stage == 0:
        return None
    card = read_card(base)
    real = RealData(cfg.get("real_data"), base_run)
    synth = synthesis_settings(cfg["synthesize"], real)
    retrain = retrain_settings(cfg, base_run, card.get("nimg"))
    register = cfg["register"]
    if base_run is None and not any(o.startswith("experiment=") for o in retrain.overrides):
        log.warning(
            "retrain: no base_run and no experiment= in retrain.overrides: the fine-tune starts from the training config's defaults"
        )
    load = ModelLoader(resolve_device(str(cfg["device"])))
    task, num_tasks = int(cfg["synthesize"]["task"]), int(cfg["synthesize"]["num_tasks"])
    name = f"{base_run.config.get('name', 'base')}-sims" if base_run else "sims"
    source, done = base, []
    for k in range(stop_iteration + 1):
        last = k == stop_iteration
        folder = layout.stage(k, "synthesize")
        manifest = synthesize_stage(
            folder,
            source,
            synth,
            int(card["network"].get("label_dim", 0)),
            load,
            load.device,
            real=real.dataset if synth.num_real else None,
            real_data=real.cfg if synth.num_real else None,
            task=task if last else 0,
            num_tasks=num_tasks if last else 1,
        )
        if manifest is None or (last and stop_stage == 1):
            return None
        run = layout.stage(k, "retrain")
        network = read_card(source)["network"]
        retrain_stage(
            run,
            source,
            network,
            folder / MANIFEST_NAME,
            folder / SHARD_DIR,
            retrain,
            base_run.overrides if base_run else (),
            f"{name}{k}",
        )
        if last and stop_stage == 2:
            return None
        provenance = {
            "synthetic_set": str(folder / MANIFEST_NAME),
            "retrain_run": str(run),
            "initialised_from": str(source),
        }
        record = register_stage(
            layout.stage(k, "register"),
            base,
            run,
            retrain.budgets,
            list(register["ema_stds"]),
            list(register["weight_space"]),
            k,
            layout.root,
            provenance,
        )
        pairs = [str(layout.stage(k, "register") / p) for p in record["info"]["pairs"]]
        done.append({"iteration": k, "manifest": str(folder / MANIFEST_NAME), "retrain_run": str(run), "pairs": pairs})
        source = (
            pair_folder(layout.stage(k, "register"), max(retrain.budgets), float(register["ema_stds"][0]))
            / NEGATIVE_NAME
        )
    return write_summary(layout, base, done)
