"""The guidance search against the dense grid, side by side, on the 2D toy (exact metrics).
One command, from anywhere:

    python benchmarks/results/search/run.py --main RUN --guide RUN   # toy main run and its guide run

1. The dense grid (``autoguide-sweep``): main EMA std x guide EMA std x guide time x weight
   (``GRID``), every setting measured on the same ``--images`` seeds; its cost is settings x
   images image evaluations.
2. The search (``autoguide-sweep search=tpe``) over the ranges the grid spans, with a budget of
   ``--share`` (25%) of the grid's image evaluations, rungs of images/9, images/3 and images
   (successive halving, factor 3), once per search seed (``--seeds``); the three studies share one
   reconstruction cache.
3. Held out: the grid's best setting is measured once more on the next ``--images`` seeds
   (``autoguide-eval``), as the search measures its own best; the table compares the held-out
   values (exact log-density, higher is better; outlier share, lower is better).

Runs, logs and studies go to ``runs/`` here (reused when present); ``results.json`` and
``results.md`` and the first search's ``history.png`` and ``contour.png`` are written here.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from search_table import report  # noqa: E402  (this folder's module)
from steps import call, git_revision, listing, number  # noqa: E402  (shared by the results scripts)

RUNS = HERE / "runs"
# The guide run (snapshots of EMA 0.01 and 0.05 every 128 kimg) represents only its stored stds before its
# end (profile error above 0.05 in between), so its std is a choice; the main run represents 0.01-0.145.
GRID = {"main_std": [0.01, 0.03, 0.09], "guide_std": [0.01, 0.05], "guide_time": [0.25, 0.5, 1.0],
        "weight": [1.5, 2.0, 2.5, 3.0]}
SAMPLING = ["metrics=toy2d", "class_labels=none", "metrics.toy.classes=A", "device=cpu",
            "progress=false", "batch_size=2000", "preview_images=0"]
METRICS = ("toy_logp", "toy_outliers", "toy_precision", "toy_recall")


def sweep(args: list[str], out: Path, log: str) -> None:
    """``autoguide-sweep`` into ``out`` unless its ``best.json`` exists."""
    if not (out / "best.json").exists():
        call([sys.executable, "-m", "autoguide.apps.sweep", *args, "select=toy_logp", f"output.dir={out}"], RUNS / "logs" / log)


def grid(main: Path, guide: Path, images: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The dense grid's rows (CSV values as numbers) and its best row."""
    out = RUNS / "grid"
    sweep([f"main.run={main}", f"guides.runs=[{guide}]", f"guides.times={listing(GRID['guide_time'])}",
           f"grid.main_std={listing(GRID['main_std'])}", f"grid.guide_std={listing(GRID['guide_std'])}",
           f"grid.weight={listing(GRID['weight'])}", f"seeds=0-{images - 1}", *SAMPLING], out, "grid.log")
    with (out / "sweep.csv").open() as f:
        rows = [{k: number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows, json.loads((out / "best.json").read_text())


def heldout(best: dict[str, Any], images: int) -> dict[str, float]:
    """The grid's best row measured on the held-out seeds ``images .. 2 images - 1``."""
    out = RUNS / "grid-heldout"
    if not (out / "metrics.json").exists():
        call([sys.executable, "-m", "autoguide.apps.evaluate", f"model={best['main_model']}", f"guide={best['guide_model']}",
              f"guidance.weight={best['weight']}", f"seeds={images}-{2 * images - 1}", *SAMPLING, f"output.dir={out}"],
             RUNS / "logs" / "grid-heldout.log")
    return json.loads((out / "metrics.json").read_text())["metrics"]


def search(main: Path, guide: Path, images: int, budget: int, seed: int) -> dict[str, Any]:
    """One search over the grid's ranges with ``budget`` image evaluations; its ``best.json``."""
    out = RUNS / f"search-{seed}"
    space = {
        "main_std": f"{{low:{min(GRID['main_std'])},high:{max(GRID['main_std'])},scale:log}}",
        "guide_std": f"{{choices:{listing(GRID['guide_std'])}}}",
        "guide_time": f"{{low:{min(GRID['guide_time'])},high:{max(GRID['guide_time'])}}}",
        "weight": f"{{low:{min(GRID['weight'])},high:{max(GRID['weight'])}}}",
    }
    sweep([f"main.run={main}", f"guides.runs=[{guide}]", "search=tpe", f"search.seed={seed}", f"search.budget={budget}",
           f"search.rungs.min_images={images // 9}", "search.rungs.factor=3", f"search.cache.dir={RUNS / 'ema-cache'}",
           *(f"search.space.{k}={v}" for k, v in space.items()), f"seeds=0-{images - 1}", *SAMPLING],
          out, f"search-{seed}.log")
    return json.loads((out / "best.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--main", type=Path, required=True, help="the toy main run (toy2d-main)")
    parser.add_argument("--guide", type=Path, required=True, help="the toy guide run (toy2d-guide)")
    parser.add_argument("--images", type=int, default=1800, help="images per setting (a multiple of 9)")
    parser.add_argument("--share", type=float, default=0.25, help="the search's budget as a share of the grid's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds")
    parser.add_argument("--fresh", action="store_true", help="delete runs/ first")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(RUNS, ignore_errors=True)
    rows, best = grid(args.main.resolve(), args.guide.resolve(), args.images)
    grid_images = len(rows) * args.images
    budget = int(args.share * grid_images)
    held = heldout(best, args.images)
    searches = []
    for seed in args.seeds:
        found = search(args.main.resolve(), args.guide.resolve(), args.images, budget, seed)
        value = found["holdout"]["metrics"]["toy_logp"]
        searches.append({"seed": seed, "best": found, "guide_nimg": found["models"]["guide"]["nimg"],
                         "gap": (held["toy_logp"] - value) / abs(held["toy_logp"])})
    result = {
        "revision": git_revision(), "images": args.images, "share": args.share, "budget": budget,
        "rungs": searches[0]["best"]["rungs"] if searches else None,
        "grid": {"axes": GRID, "settings": len(rows), "images": grid_images, "best": best, "heldout": held},
        "searches": searches,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "results.md").write_text(report(result))
    for name in ("history.png", "contour.png", "importances.png"):
        if (RUNS / f"search-{args.seeds[0]}" / name).exists():
            shutil.copyfile(RUNS / f"search-{args.seeds[0]}" / name, HERE / name)
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
