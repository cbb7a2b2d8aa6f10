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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoguide.data.registry import TrainingSet
from autoguide.io import read_card, write_text_atomic
from autoguide.runtime.process import ModelLoader, resolve_device
from autoguide.sample.sampler_settings import GenerationSettings
from autoguide.sims.base import base_stage
from autoguide.sims.base_run import BaseRun, read_base_run
from autoguide.sims.register import NEGATIVE_NAME, pair_folder, register_stage
from autoguide.sims.retrain import ComposeTraining, RetrainSettings, retrain_stage
from autoguide.sims.sims_settings import STAGES, SimsSettings, SynthesizeOptions
from autoguide.sims.synthesize import MANIFEST_NAME, SHARD_DIR, SynthesisSettings, synthesize_stage

log = logging.getLogger(__name__)

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


class RealData:
    """The real training set, from ``real_data`` or the base run's ``data``; built on first use."""

    def __init__(self, cfg: dict[str, Any] | None, base_run: BaseRun | None) -> None:
        self._cfg = dict(cfg) if cfg is not None else None
        self._base_run = base_run

    @functools.cached_property
    def cfg(self) -> dict[str, Any] | None:
        """The dataset config (``name`` and that dataset's keys), or ``None`` if unknown."""
        if self._cfg is None and self._base_run is not None:
            return self._base_run.real_data()
        return self._cfg

    @functools.cached_property
    def dataset(self) -> TrainingSet:
        from autoguide.data.registry import build_dataset

        if self.cfg is None:
            raise ValueError(
                "the real training set is needed (synthesize.num_images=null or real_fraction > 0): "
                "set real_data=<dataset config> or base_run=<run folder>"
            )
        return build_dataset(self.cfg)


def synthesis_settings(options: SynthesizeOptions, real: RealData) -> SynthesisSettings:
    """The ``synthesize`` node as the stage's settings; ``num_images: null`` = the real set's size."""
    generation = GenerationSettings(sampler=options.sampler, batch_size=options.batch_size, precision=options.precision)
    return SynthesisSettings(
        num_images=len(real.dataset) if options.num_images is None else options.num_images,
        real_fraction=options.real_fraction,
        real_seed=options.real_seed,
        first_seed=options.first_seed,
        class_labels=options.class_labels,
        shard_size=options.shard_size,
        generation=generation,
        guidance=options.guidance,
    )


def retrain_settings(settings: SimsSettings, base_run: BaseRun | None, base_nimg: int | None) -> RetrainSettings:
    """The ``retrain`` node and the budgets as the stage's settings, with the default learning
    rate (the base run's final one) resolved."""
    options = settings.retrain
    lr = options.lr
    if lr is None:
        if base_run is None or base_nimg is None:
            raise ValueError(
                "retrain.lr=null takes the base run's final learning rate: "
                "set base_run=<run folder> (and a base with nimg in its card) or retrain.lr"
            )
        lr = base_run.final_learning_rate(base_nimg)
        log.info("retrain: learning rate %.6g (the base run's at nimg %d)", lr, base_nimg)
    return RetrainSettings(
        budgets=settings.budgets,
        lr=float(lr),
        lr_ref_batches=float(options.lr_ref_batches),
        lr_rampup_mi=float(options.lr_rampup_mi),
        ema_stds=tuple(float(s) for s in options.ema_stds),
        checkpoint_kimg=options.checkpoint_kimg,
        overrides=tuple(options.overrides),
        launcher=tuple(options.launcher),
    )


def write_summary(layout: Layout, base: Path, iterations: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {"format": SUMMARY_FORMAT, "base": str(base), "iterations": iterations}
    write_text_atomic(layout.root / SUMMARY_NAME, json.dumps(summary, indent=1) + "\n")
    return summary


class Rounds:
    """The SIMS rounds after the base stage: what they share (the base, the stage settings,
    the real data, the model loader, how the training config is composed) and one method per
    stage of round ``k``."""

    def __init__(
        self,
        settings: SimsSettings,
        layout: Layout,
        base: Path,
        base_run: BaseRun | None,
        compose_training: ComposeTraining,
    ) -> None:
        self.settings, self.layout, self.base = settings, layout, base
        self.compose_training = compose_training
        self.base_overrides = base_run.overrides if base_run else ()
        self.name = f"{base_run.config.get('name', 'base')}-sims" if base_run else "sims"
        card = read_card(base)
        self.label_dim = int(card["network"].get("label_dim", 0))
        self.real = RealData(settings.real_data, base_run)
        self.synth = synthesis_settings(settings.synthesize, self.real)
        self.retrain = retrain_settings(settings, base_run, card.get("nimg"))
        if base_run is None and not any(o.startswith("experiment=") for o in self.retrain.overrides):
            log.warning(
                "retrain: no base_run and no experiment= in retrain.overrides: "
                "the fine-tune starts from the training config's defaults"
            )
        self.load = ModelLoader(resolve_device(settings.device))

    def synthesize(self, k: int, source: Path, array_task: bool) -> Path | None:
        """Round ``k``'s synthetic set from ``source`` (only this task's chunks if ``array_task``);
        its folder once complete, else ``None``."""
        folder = self.layout.stage(k, "synthesize")
        options, real = self.settings.synthesize, self.synth.num_real > 0
        manifest = synthesize_stage(
            folder,
            source,
            self.synth,
            self.label_dim,
            self.load,
            self.load.device,
            real=self.real.dataset if real else None,
            real_data=self.real.cfg if real else None,
            task=options.task if array_task else 0,
            num_tasks=options.num_tasks if array_task else 1,
        )
        return None if manifest is None else folder

    def fine_tune(self, k: int, source: Path, synthetic: Path) -> Path:
        """Round ``k``'s fine-tune of ``source`` on the set in ``synthetic``; its run folder."""
        run = self.layout.stage(k, "retrain")
        network = read_card(source)["network"]
        manifest, shards = synthetic / MANIFEST_NAME, synthetic / SHARD_DIR
        retrain_stage(
            self.compose_training,
            run,
            source,
            network,
            manifest,
            shards,
            self.retrain,
            self.base_overrides,
            f"{self.name}{k}",
        )
        return run

    def register(self, k: int, source: Path, synthetic: Path, run: Path) -> tuple[dict[str, Any], Path]:
        """Round ``k``'s pairs from the fine-tune ``run``: the summary entry and the next
        round's source (the negative at the largest budget and the first EMA std)."""
        folder, options = self.layout.stage(k, "register"), self.settings.register
        provenance = {"synthetic_set": str(synthetic / MANIFEST_NAME), "retrain_run": str(run)}
        budgets = self.retrain.budgets
        record = register_stage(
            folder,
            self.base,
            run,
            budgets,
            options.ema_stds,
            options.weight_space,
            k,
            self.layout.root,
            {**provenance, "initialised_from": str(source)},
        )
        pairs = [str(folder / p) for p in record["info"]["pairs"]]
        entry = {"iteration": k, "manifest": provenance["synthetic_set"], "retrain_run": str(run), "pairs": pairs}
        return entry, pair_folder(folder, max(budgets), options.ema_stds[0]) / NEGATIVE_NAME


def run_sims(settings: SimsSettings, compose_training: ComposeTraining) -> dict[str, Any] | None:
    """Run the configured SIMS stages (see ``conf/sims.yaml``; the fine-tunes' training config
    from ``compose_training``); returns the summary, or ``None`` when stopped early
    (``stop_after``) or when other array tasks still owe chunks."""
    layout = Layout(Path(settings.out_dir).resolve())
    stop_iteration, stop_stage = settings.stop_point
    base_run = read_base_run(settings.base_run) if settings.base_run else None
    base = base_stage(layout.base, settings.base, base_run, settings.base_ema_std, settings.base_at_nimg)
    if stop_stage == STAGES.index("base"):
        return None
    rounds = Rounds(settings, layout, base, base_run, compose_training)
    source, done = base, []
    for k in range(stop_iteration + 1):
        last = STAGES[stop_stage] if k == stop_iteration else STAGES[-1]
        synthetic = rounds.synthesize(k, source, array_task=k == stop_iteration)
        if synthetic is None or last == "synthesize":
            return None
        run = rounds.fine_tune(k, source, synthetic)
        if last == "retrain":
            return None
        entry, source = rounds.register(k, source, synthetic, run)
        done.append(entry)
    return write_summary(layout, base, done)
