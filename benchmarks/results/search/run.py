"""The guidance search against the dense grid, side by side, on the 2D toy (exact metrics) and
MNIST-5k (FD on the MNIST classifier's features). One command per dataset, from anywhere:

    python benchmarks/results/search/run.py --main RUN --guide RUN                   # toy2d-main, toy2d-guide
    python benchmarks/results/search/run.py --dataset mnist --main RUN --guide RUN   # + the classifier in runs/models

1. The dense grid (``autoguide-sweep``): main EMA std x guide EMA std x guide time x weight
   (``Dataset.grid``), every setting measured on the same ``--images`` seeds; its cost is
   settings x images image evaluations.
2. The search (``autoguide-sweep search=tpe``) over the ranges the grid spans, with a budget of
   ``--share`` (25%) of the grid's image evaluations, rungs of images/9, images/3 and images
   (successive halving, factor 3; ``--min-images`` starts them elsewhere, its files then named
   ``-from<N>``), once per search seed (``--seeds``); the three studies share one reconstruction cache.
3. Held out: the grid's best setting is measured once more on the next ``--images`` seeds
   (``autoguide-eval``), as the search measures its own best; the table compares the held-out
   values of the selecting metric (toy: exact log-density, higher is better; MNIST: FD).
4. Spread: every pick once more on three further disjoint sets of ``--images`` seeds (mean and
   std), to tell the held-out differences from seed noise.

Runs, logs and studies go to ``runs/`` here (reused when present); ``results-<dataset>.json``,
``results-<dataset>.md`` and the first search's plots (``<dataset>-history.png``, ...) are
written here.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from search_table import report  # noqa: E402  (this folder's module)
from steps import call, git_revision, listing, number  # noqa: E402  (shared by the results scripts)

from autoguide.eval.evaluator import lower_is_better  # noqa: E402

RUNS = HERE / "runs"


@dataclass(frozen=True)
class Dataset:
    """One comparison: the metric that selects (``select``), the sampling options, the grid
    (whose ranges the search spans) and where its folders go (``prefix`` under ``runs/``)."""

    name: str
    select: str
    sampling: tuple[str, ...]
    grid: dict[str, list[float]]
    prefix: str
    images: int


TOY = Dataset(
    name="toy",
    select="toy_logp",
    prefix="",
    sampling=(
        "metrics=toy2d",
        "class_labels=none",
        "metrics.toy.classes=A",
        "device=cpu",
        "progress=false",
        "batch_size=2000",
        "preview_images=0",
    ),
    # The guide run (snapshots of EMA 0.01 and 0.05 every 128 kimg) represents only its stored stds before its
    # end (profile error above 0.05 in between), so its std is a choice; the main run represents 0.01-0.145.
    grid={
        "main_std": [0.01, 0.03, 0.09],
        "guide_std": [0.01, 0.05],
        "guide_time": [0.25, 0.5, 1.0],
        "weight": [1.5, 2.0, 2.5, 3.0],
    },
    images=1800,
)
MNIST = Dataset(
    name="mnist",
    select="fd_mnist",
    prefix="mnist-",
    sampling=(
        "metrics=mnist",
        f"extractors.mnist.path={RUNS / 'models' / 'mnist-classifier.safetensors'}",
        f"cache_dir={RUNS / 'cache'}",
        "class_labels=random",
        "sampler.num_steps=8",
        "batch_size=270",
        "device=cpu",
        "progress=false",
        "preview_images=0",
    ),
    grid={"main_std": [0.05, 0.1], "guide_std": [0.05, 0.1], "guide_time": [0.5, 1.0], "weight": [1.5, 2.0, 2.5]},
    images=270,
)
DATASETS = {"toy": TOY, "mnist": MNIST}


def sweep(data: Dataset, args: list[str], out: Path, log: str) -> None:
    """``autoguide-sweep`` into ``out`` unless its ``best.json`` exists."""
    if not (out / "best.json").exists():
        call(
            [
                sys.executable,
                "-m",
                "autoguide.apps.sweep",
                *args,
                *data.sampling,
                f"select={data.select}",
                f"output.dir={out}",
            ],
            RUNS / "logs" / log,
        )


def grid(data: Dataset, main: Path, guide: Path, images: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The dense grid's rows (CSV values as numbers) and its best row."""
    out = RUNS / f"{data.prefix}grid"
    g = data.grid
    sweep(
        data,
        [
            f"main.run={main}",
            f"guides.runs=[{guide}]",
            f"guides.times={listing(g['guide_time'])}",
            f"grid.main_std={listing(g['main_std'])}",
            f"grid.guide_std={listing(g['guide_std'])}",
            f"grid.weight={listing(g['weight'])}",
            f"seeds=0-{images - 1}",
        ],
        out,
        f"{data.prefix}grid.log",
    )
    with (out / "sweep.csv").open() as f:
        rows = [{k: number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows, json.loads((out / "best.json").read_text())


def heldout(data: Dataset, best: dict[str, Any], images: int) -> dict[str, float]:
    """The grid's best row measured on the held-out seeds ``images .. 2 images - 1``."""
    out = RUNS / f"{data.prefix}grid-heldout"
    if not (out / "metrics.json").exists():
        call(
            [
                sys.executable,
                "-m",
                "autoguide.apps.evaluate",
                f"model={best['main_model']}",
                f"guide={best['guide_model']}",
                f"guidance.weight={best['weight']}",
                f"seeds={images}-{2 * images - 1}",
                *data.sampling,
                f"output.dir={out}",
            ],
            RUNS / "logs" / f"{data.prefix}grid-heldout.log",
        )
    return json.loads((out / "metrics.json").read_text())["metrics"]


def search(
    data: Dataset, main: Path, guide: Path, images: int, budget: int, min_images: int, seed: int
) -> dict[str, Any]:
    """One search over the grid's ranges with ``budget`` image evaluations, rungs from
    ``min_images`` (factor 3); its ``best.json``."""
    out = RUNS / f"{data.prefix}search{variant(images, min_images)}-{seed}"
    g = data.grid
    space = {
        "main_std": f"{{low:{min(g['main_std'])},high:{max(g['main_std'])},scale:log}}",
        "guide_std": f"{{choices:{listing(g['guide_std'])}}}",
        "guide_time": f"{{low:{min(g['guide_time'])},high:{max(g['guide_time'])}}}",
        "weight": f"{{low:{min(g['weight'])},high:{max(g['weight'])}}}",
    }
    sweep(
        data,
        [
            f"main.run={main}",
            f"guides.runs=[{guide}]",
            "search=tpe",
            f"search.seed={seed}",
            f"search.budget={budget}",
            f"search.rungs.min_images={min_images}",
            "search.rungs.factor=3",
            f"search.cache.dir={RUNS / 'ema-cache'}",
            *(f"search.space.{k}={v}" for k, v in space.items()),
            f"seeds=0-{images - 1}",
        ],
        out,
        f"{out.name}.log",
    )
    return json.loads((out / "best.json").read_text())


def spread(
    data: Dataset, name: str, main: str, guide: str, weight: float, images: int, sets: int = 3
) -> dict[str, Any]:
    """A pick measured on ``sets`` more disjoint held-out seed sets (after the first two ``images``
    seeds): the mean and std of each metric (``autoguide-eval seed_sets``)."""
    out = RUNS / f"{data.prefix}spread" / name
    if not (out / "metrics.json").exists():
        call(
            [
                sys.executable,
                "-m",
                "autoguide.apps.evaluate",
                f"model={main}",
                f"guide={guide}",
                f"guidance.weight={weight}",
                f"seeds={2 * images}-{3 * images - 1}",
                f"seed_sets={sets}",
                *data.sampling,
                f"output.dir={out}",
            ],
            RUNS / "logs" / f"{data.prefix}spread-{name}.log",
        )
    report = json.loads((out / "metrics.json").read_text())
    return {"mean": report["mean"], "std": report["std"], "seeds": [s["seeds"] for s in report["sets"]]}


def variant(images: int, min_images: int) -> str:
    """The suffix of the folders and files of a search whose rungs do not start at images/9."""
    return "" if min_images == images // 9 else f"-from{min_images}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="toy")
    parser.add_argument("--main", type=Path, required=True, help="the main run (toy2d-main, mnist-s)")
    parser.add_argument("--guide", type=Path, required=True, help="the guide run (toy2d-guide, mnist-xs-guide)")
    parser.add_argument("--images", type=int, default=None, help="images per setting (a multiple of 9)")
    parser.add_argument("--share", type=float, default=0.25, help="the search's budget as a share of the grid's")
    parser.add_argument("--min-images", type=int, default=None, help="the first rung (default: images/9)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds")
    parser.add_argument("--fresh", action="store_true", help="delete runs/ first")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(RUNS, ignore_errors=True)
    data = DATASETS[args.dataset]
    images = args.images or data.images
    min_images = args.min_images or images // 9
    tag = variant(images, min_images)
    rows, best = grid(data, args.main.resolve(), args.guide.resolve(), images)
    grid_images = len(rows) * images
    budget = int(args.share * grid_images)
    held = heldout(data, best, images)
    grid_spread = spread(data, "grid", best["main_model"], best["guide_model"], best["weight"], images)
    sign = 1 if lower_is_better(data.select) else -1  # gap > 0: the search's pick is worse
    searches = []
    for seed in args.seeds:
        found = search(data, args.main.resolve(), args.guide.resolve(), images, budget, min_images, seed)
        value = found["holdout"]["metrics"][data.select]
        again = spread(
            data,
            f"search{tag}-{seed}",
            found["models"]["main"]["file"],
            found["models"]["guide"]["file"],
            found["setting"]["weight"],
            images,
        )
        searches.append(
            {
                "seed": seed,
                "best": found,
                "guide_nimg": found["models"]["guide"]["nimg"],
                "gap": sign * (value - held[data.select]) / abs(held[data.select]),
                "spread": again,
                "spread_gap": sign
                * (again["mean"][data.select] - grid_spread["mean"][data.select])
                / abs(grid_spread["mean"][data.select]),
            }
        )
    result = {
        "dataset": data.name,
        "select": data.select,
        "revision": git_revision(),
        "images": images,
        "share": args.share,
        "budget": budget,
        "rungs": searches[0]["best"]["rungs"] if searches else None,
        "grid": {
            "axes": data.grid,
            "settings": len(rows),
            "images": grid_images,
            "best": best,
            "heldout": held,
            "spread": grid_spread,
        },
        "searches": searches,
    }
    (HERE / f"results-{data.name}{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / f"results-{data.name}{tag}.md").write_text(report(result))
    first = RUNS / f"{data.prefix}search{tag}-{args.seeds[0]}"
    for name in ("history.png", "contour.png", "importances.png"):
        if (first / name).exists():
            shutil.copyfile(first / name, HERE / f"{data.name}{tag}-{name}")
    print((HERE / f"results-{data.name}{tag}.md").read_text())


if __name__ == "__main__":
    main()
