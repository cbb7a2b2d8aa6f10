"""SIMS stage 4: the auxiliary (negative) model files and their ``pair.json``.

For every budget ``B`` and EMA length ``s`` the fine-tuned model is rebuilt from the
retraining run's post-hoc EMA snapshots at ``nimg = B`` (``autoguide.ema.PosthocEMA``, in memory) and
stored as ``b{B:012d}-std{s:.4f}/negative.safetensors`` with its card extended by a ``sims``
entry (base, budget, iteration, synthetic set). Beside it: the weight-space models
``weightspace-w{w:.3f}.safetensors`` (``theta_base + w (theta_base - theta_synth)``) and
``pair.json`` (``autoguide.io.sims_pair``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from autoguide.ema.posthoc import PosthocEMA
from autoguide.io import file_sha256, save_model
from autoguide.io.sims_pair import PAIR_NAME, SimsPair, write_pair
from autoguide.sims.records import run_whole_stage
from autoguide.sims.weightspace import write_weightspace_model

STAGE = "register"
NEGATIVE_NAME = "negative.safetensors"


def pair_folder(folder: Path, budget_nimg: int, ema_std: float) -> Path:
    """Where the pair for budget ``budget_nimg`` and EMA std ``ema_std`` goes."""
    return folder / f"b{int(budget_nimg):012d}-std{float(ema_std):.4f}"


def weightspace_name(weight: float) -> str:
    return f"weightspace-w{float(weight):.3f}.safetensors"


def register_stage(
    folder: Path,
    positive: Path,
    retrain_run: Path,
    budgets: Sequence[int],
    ema_stds: Sequence[float],
    weight_space: Sequence[float],
    iteration: int,
    root: Path,
    provenance: Mapping[str, Any],
) -> dict[str, Any]:
    """Run (or skip) the register stage; the record's ``info.pairs`` lists the pair files."""
    phema = retrain_run / "phema"
    spec = {
        "positive_sha256": file_sha256(positive),
        "phema_index_sha256": file_sha256(phema / "index.json"),
        "budgets": [int(b) for b in budgets],
        "ema_stds": [float(s) for s in ema_stds],
        "weight_space": [float(w) for w in weight_space],
        "iteration": iteration,
    }

    def work() -> tuple[list[Path], dict[str, Any]]:
        """Every (budget, std) pair (``write_pair_files``); the negative's card has a ``sims``
        entry: iteration, budget, std, base and ``provenance``."""
        outputs: list[Path] = []
        snapshots = PosthocEMA(phema)
        for budget in budgets:
            for std, state, card in snapshots.models(list(ema_stds), int(budget)):
                sims = {
                    "iteration": iteration,
                    "budget_nimg": int(budget),
                    "ema_std": float(std),
                    "base": str(positive),
                }
                target = pair_folder(folder, budget, std)
                outputs += write_pair_files(target, positive, state, card, {**sims, **provenance}, weight_space, root)
        return outputs, {"pairs": [p.relative_to(folder).as_posix() for p in outputs if p.name == PAIR_NAME]}

    return run_whole_stage(folder, STAGE, spec, work)


def write_pair_files(
    target: Path,
    positive: Path,
    state: Mapping[str, torch.Tensor],
    card: Mapping[str, Any],
    sims: Mapping[str, Any],
    weight_space: Sequence[float],
    root: Path,
) -> list[Path]:
    """One pair in ``target``: the negative model (weights ``state``, its EMA ``card`` with the
    ``sims`` entry), a weight-space model per ``w'`` and ``pair.json``; returns their paths."""
    negative = target / NEGATIVE_NAME
    save_model(negative, state, {**card, "source": f"SIMS negative: {card.get('source')}", "sims": dict(sims)})
    spaces = {
        float(w): write_weightspace_model(target / weightspace_name(w), positive, negative, float(w), sims)
        for w in weight_space
    }
    pair = SimsPair(positive, negative, sims["budget_nimg"], sims["ema_std"], sims["iteration"], spaces)
    write_pair(target / PAIR_NAME, pair, root)
    return [negative, *spaces.values(), target / PAIR_NAME]
