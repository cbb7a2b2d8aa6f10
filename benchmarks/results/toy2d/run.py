"""Regenerate the toy2d results of the evaluation issue (autoguidance paper, Karras et al. 2024,
Fig. 1) with one command, from the repository root:

    python benchmarks/results/toy2d/run.py            # reuses finished runs/sweeps in runs/
    python benchmarks/results/toy2d/run.py --fresh    # deletes runs/ first: everything from scratch

Every step is one of the project's own commands (``train.py``, ``autoguide-sweep``, whose
post-hoc EMAs come from ``autoguide.ema.PosthocEMA``); runs and sweeps go to ``runs/`` here.

Headline (the issue's recipe, built as the paper's toy: energy-parametrised MP-MLPs, 16 Mi samples
at batch 4096, regressing the exact posterior mean of the mixture, ``train.target=exact``):
1. train the main model of class A (``experiment=toy2d-main``: p(x | A), width 64), the
   CFG negative (``experiment=toy2d-cfg``: p(x) over classes A and B, width 32, T/8, as in the
   paper) and the autoguidance guide (``experiment=toy2d-guide``: class A, width 32, T/8, EMA
   snapshots every 128 kimg so that its EMAs can be rebuilt post hoc; its T/16 point is read from
   the same run: the EDM2 learning rate depends on the image count only, so the first half of a
   T/8 run is a T/16 run);
2. sweep with exact metrics of ``NUM_SEEDS`` class-A samples (the same seeds for every setting):
   the main EMA length unguided; CFG weight x EMA length of the negative; autoguidance weight x
   guide EMA length x guide training time;
3. pick each method's setting by the rule of ``selection.py``.

Recipe variants (same rule, smaller grids): a width-16 guide (T/8); a width-32 guide trained to
T/4; the main run itself read early as the guide (width 64, less training only); guidance only at
low noise levels, or only at high ones.

Writes ``results.json``, ``results.md`` and ``fig1.png`` (``report.py``, ``figure.py``).
Torch runs single-threaded (``OMP_NUM_THREADS=1``): for this tiny MLP on a shared 2-core machine
that is several times faster than two threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
sys.path[:0] = [str(HERE), str(HERE.parent)]

import figure  # noqa: E402  (this folder's modules)
import report  # noqa: E402
import selection  # noqa: E402
from steps import call, git_revision, listing, number  # noqa: E402  (shared by the results scripts)

NUM_SEEDS = 10_000  # evaluated samples per setting (seeds 0..NUM_SEEDS-1)
FIGURE_POINTS = 3_000  # points per figure panel: the first seeds of the evaluation
MAIN_STDS = [0.01, 0.05]  # the runs' snapshot EMA lengths (0.01: the paper's)
NEGATIVE_STDS = [0.01, 0.05]  # EMA lengths of the CFG negative and of the guide
CFG_WEIGHTS = [1.0, 1.25, 1.5, 2.0, 3.0, 4.0]
AG_WEIGHTS = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0]
VARIANT_WEIGHTS = [1.5, 2.0, 3.0, 4.0]

COMMON = [f"paths.runs_dir={RUNS}", "logger=csv", "seed=0"]
# The main model is p(x | A) (no labels): its samples are measured against class A's tree.
CLASS_A = ["class_labels=none", "metrics.toy.classes=A"]
TRAININGS = {
    "toy2d-main": ["experiment=toy2d-main"],
    "toy2d-cfg": ["experiment=toy2d-cfg"],
    "toy2d-guide": ["experiment=toy2d-guide"],
    "guide-w16": ["experiment=toy2d-guide", "net.width=16"],
    "guide-t4": ["experiment=toy2d-guide", "train.duration_fraction=0.25"],
}
SWEEP = [
    sys.executable,
    "-m",
    "autoguide.apps.sweep",
    "metrics=toy2d",
    f"seeds=0-{NUM_SEEDS - 1}",
    "select=toy_logp",
    "device=cpu",
    "progress=false",
    "batch_size=2000",
]


@dataclass(frozen=True)
class Variant:
    """One recipe variant: an autoguidance sweep of ``guide`` (a run of ``TRAININGS``) read at
    ``times`` (fractions of that run, null = its end), with the headline's main model and
    unguided reference."""

    tag: str
    label: str
    guide: str
    times: Sequence[str]
    stds: Sequence[float] = (0.05,)
    weights: Sequence[float] = tuple(VARIANT_WEIGHTS)
    intervals: Sequence[str] = ("null",)


VARIANTS = [
    Variant("v-w16", "guide width 16, read at T/16 and T/8", "guide-w16", ["0.5", "null"]),
    Variant(
        "v-t4",
        "guide width 32 trained longer: read at T/8 and T/4",
        "guide-t4",
        ["0.5", "null"],
        stds=(0.01,),
        weights=(1.5, 1.75, 2.0, 2.5),
    ),
    Variant(
        "v-w64",
        "guide = the main run itself read early (width 64, less training only): T/16, T/8, T/4",
        "toy2d-main",
        ["0.0625", "0.125", "0.25"],
    ),
    Variant(
        "v-interval",
        "headline guide (width 32, T/8), guidance only for sigma in (0, 0.1] or (0, 1]",
        "toy2d-guide",
        ["null"],
        weights=(2.0, 3.0, 5.0),
        intervals=("[0.0,0.1]", "[0.0,1.0]"),
    ),
    Variant(
        "v-interval-high",
        "headline guide (width 32, T/8), guidance only for sigma >= 0.1, 0.3 or 1",
        "toy2d-guide",
        ["null"],
        stds=(0.01,),
        weights=(2.0, 3.0),
        intervals=("[0.1,80.0]", "[0.3,80.0]", "[1.0,80.0]"),
    ),
]


def training_seconds(run_dir: Path) -> int:
    """Wall seconds of a finished training run: from the first to the "final model" line of its
    ``logs/train.log`` (the last invocation, if it was resumed)."""
    lines = (run_dir / "logs" / "train.log").read_text().splitlines()
    stamp = lambda line: datetime.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")  # noqa: E731
    final = [line for line in lines if "final model" in line]
    return round((stamp(final[-1]) - stamp(lines[0])).total_seconds())


def sweep_seconds(out: Path) -> int:
    """Wall seconds of a finished sweep: the sum of its settings' times in ``sweep.csv``."""
    with (out / "sweep.csv").open() as f:
        return round(sum(float(row["seconds"]) for row in csv.DictReader(f)))


def train(name: str, steps: dict[str, Any]) -> Path:
    """Train run ``name`` unless its final model exists; returns the run folder."""
    run_dir = RUNS / name
    command = [sys.executable, "train.py", *TRAININGS[name], *COMMON, f"name={name}"]
    steps[f"train {name}"] = {"command": " ".join(["python", *command[1:]])}
    if (run_dir / "final.safetensors").is_file():
        steps[f"train {name}"]["seconds"] = f"{training_seconds(run_dir)} (earlier)"
    else:
        steps[f"train {name}"]["seconds"] = call(command, RUNS / "logs" / f"train-{name}.log")
    return run_dir


def sweep(tag: str, overrides: list[str], steps: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one ``autoguide-sweep`` into ``runs/sweeps/<tag>`` unless the same command
    already finished there; returns its rows."""
    out = RUNS / "sweeps" / tag
    command = [*SWEEP, *overrides, f"output.dir={out}"]
    stamp = out / "command.json"
    steps[f"sweep {tag}"] = {"command": " ".join(["python", *command[1:]])}
    if (out / "best.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == command:
        steps[f"sweep {tag}"]["seconds"] = f"{sweep_seconds(out)} (earlier)"
    else:
        steps[f"sweep {tag}"]["seconds"] = call(command, RUNS / "logs" / f"sweep-{tag}.log")
        stamp.write_text(json.dumps(command))
    with (out / "sweep.csv").open() as f:
        return [unguided_fields({k: number(v) for k, v in row.items()}) for row in csv.DictReader(f)]


def unguided_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A weight-1 row uses no negative: its guide fields are cleared (the sweep names one)."""
    if float(row["weight"]) == 1.0:
        row.update(guide="-", guide_std=None, guide_nimg=None, guide_model=None)
    return row


def cfg_negatives(run_dir: Path) -> tuple[int, dict[float, Path]]:
    """``(nimg, {std: file})``: post-hoc EMAs ``NEGATIVE_STDS`` of the unconditional run at its
    end (reconstructed once, cached in ``<run>/reconstructed``)."""
    from autoguide.ema import PosthocEMA
    from autoguide.ema.cache import ReconstructionCache

    ema = PosthocEMA(run_dir)
    return ReconstructionCache(ema.default_dir).files(ema, NEGATIVE_STDS)


def headline(runs: Mapping[str, Path], steps: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    """Unguided, CFG and autoguidance sweeps of the issue's recipe; returns the picks and rows."""
    main_run = runs["toy2d-main"]
    unguided = sweep(
        "unguided",
        [*CLASS_A, f"main.run={main_run}", "grid.weight=[1.0]", f"grid.main_std={listing(MAIN_STDS)}"],
        steps,
    )
    reference = selection.unguided_reference(unguided)
    fixed_main = [*CLASS_A, f"main.run={main_run}", f"grid.main_std=[{reference['main_std']}]"]
    cfg_rows = []
    negative_nimg, negatives = cfg_negatives(runs["toy2d-cfg"])
    for std, negative in negatives.items():
        rows = sweep(
            f"cfg-std{std:.3f}",
            [*fixed_main, "guidance=cfg", f"guidance.model={negative}", f"grid.weight={listing(CFG_WEIGHTS)}"],
            steps,
        )
        negative_fields = {
            "guide": f"toy2d-cfg@{negative_nimg}",
            "guide_std": std,
            "guide_nimg": negative_nimg,
            "guide_model": str(negative),
        }
        cfg_rows += [r if float(r["weight"]) == 1.0 else {**r, **negative_fields} for r in rows]
    ag_rows = sweep(
        "autoguidance",
        [
            *fixed_main,
            f"guides.runs=[{runs['toy2d-guide']}]",
            "guides.times=[0.5,null]",
            f"grid.guide_std={listing(NEGATIVE_STDS)}",
            f"grid.weight={listing(AG_WEIGHTS)}",
        ],
        steps,
    )
    picks = report.picks(reference, selection.same_main(cfg_rows, reference), selection.same_main(ag_rows, reference))
    return picks, {"unguided": unguided, "cfg": cfg_rows, "autoguidance": ag_rows}


def variant(
    v: Variant, runs: Mapping[str, Path], reference: Mapping[str, Any], steps: dict[str, Any]
) -> dict[str, Any]:
    """One recipe variant's sweep, pick and target check against the headline's unguided reference."""
    rows = sweep(
        v.tag,
        [
            *CLASS_A,
            f"main.run={runs['toy2d-main']}",
            f"grid.main_std=[{reference['main_std']}]",
            f"guides.runs=[{runs[v.guide]}]",
            f"guides.times={listing(v.times)}",
            f"grid.guide_std={listing(v.stds)}",
            f"grid.weight={listing(v.weights)}",
            f"grid.interval={listing(v.intervals)}",
        ],
        steps,
    )
    chosen = selection.pick(selection.same_main(rows, reference), reference)
    return {
        "tag": v.tag,
        "label": v.label,
        "reference": reference,
        "pick": chosen,
        "target": selection.target(reference, chosen),
        "rows": rows,
    }


def samples(row: Mapping[str, Any], kind: str) -> torch.Tensor:
    """The first ``FIGURE_POINTS`` samples of a sweep row's setting (the same seeds, hence the
    same points, as in its evaluation)."""
    from autoguide import load_denoiser
    from autoguide.sample import CFG, Autoguidance, generate_images

    net = load_denoiser(row["main_model"])
    terms = []
    if float(row["weight"]) != 1.0:
        negative = load_denoiser(row["guide_model"])
        terms = (
            [Autoguidance(guide=negative, weight=float(row["weight"]))]
            if kind == "autoguidance"
            else [CFG(weight=float(row["weight"]), unconditional=negative)]
        )
    return generate_images(net, range(FIGURE_POINTS), None, terms, batch_size=FIGURE_POINTS)


def make_figure(path: Path, picks: Mapping[str, Mapping[str, Any] | None]) -> None:
    """fig1.png: exact samples of class A and the picked unguided, CFG and autoguidance settings."""
    from autoguide.data.toy2d import toy_mixture
    from autoguide.eval.toy_metrics import ToyMetricsConfig, density_level

    toy = ToyMetricsConfig()
    exact = toy_mixture("A").sample(FIGURE_POINTS, torch.Generator().manual_seed(0)).numpy()
    panels = [figure.Panel("(a) ground truth, class A", f"{FIGURE_POINTS} exact samples", exact)]
    for letter, (label, kind) in zip("bcd", report.FIGURE_ROWS, strict=True):
        row = picks[label]
        panels.append(figure.Panel(f"({letter}) {label}", report.short_metrics(row), samples(row, kind).numpy()))
    level = density_level("A", toy.outlier_quantile, toy.num_density_samples, toy.seed)
    figure.draw(path, panels, level)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="delete runs/ first and redo everything")
    args = parser.parse_args()
    if args.fresh and RUNS.exists():
        shutil.rmtree(RUNS)
    torch.set_num_threads(1)
    started = time.time()
    steps: dict[str, Any] = {}

    runs = {name: train(name, steps) for name in TRAININGS}
    picks, sweeps = headline(runs, steps)
    variants = [variant(v, runs, picks["unguided"], steps) for v in VARIANTS]
    figure_started = time.time()
    make_figure(HERE / "fig1.png", picks)
    steps["figure"] = {"seconds": round(time.time() - figure_started, 1)}
    meta = {
        "command": "python benchmarks/results/toy2d/run.py" + (" --fresh" if args.fresh else ""),
        "wall_seconds": round(time.time() - started, 1),
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "num_seeds": NUM_SEEDS,
        "steps": steps,
    }
    report.write(HERE, meta, picks, sweeps, variants)
    print(json.dumps({"target": picks["target"], "wall_seconds": meta["wall_seconds"]}))


if __name__ == "__main__":
    main()
