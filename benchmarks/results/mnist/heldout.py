"""Re-measure every method's picked setting on held-out seeds (called by ``run.sh``).

The sweeps pick each method's best setting on seeds 0..N-1, so the picked FD is biased low by
the selection (the minimum over a grid of noisy estimates) and biased high by the small sample
(FD grows like 1/N at a fixed distribution). This script evaluates each pick once more with
``autoguide-eval`` on disjoint seeds (default 1000-1999: four times as many, none used in any
sweep) into ``runs/heldout-<method>/metrics.json``; ``report.py`` shows both and judges the
target on the held-out numbers. Finished methods are skipped, so rerunning resumes.

    python benchmarks/results/mnist/heldout.py --runs benchmarks/results/mnist/runs --seeds 1000-1999
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from autoguide.eval import evaluate
from autoguide.eval.app import compose_config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (this folder's module)


def evaluate_pick(runs: Path, method: str, row: dict, seeds: str, classifier: Path) -> None:
    """``autoguide-eval`` of one picked setting into ``runs/heldout-<method>``."""
    out = runs / f"heldout-{method}"
    overrides = [
        f"model={row['main_model']}", f"seeds={seeds}", f"class_labels={row['class_labels']}", "batch_size=250",
        "device=cpu", "progress=false", f"cache_dir={runs / 'cache'}", f"extractors.mnist.path={classifier}",
        "metrics=mnist", "preview_images=0", f"output.dir={out}",
    ]
    cfg = compose_config("evaluate", overrides)
    with open_dict(cfg):
        cfg.sampler = OmegaConf.create(row["sampler"])
        cfg.guidance = OmegaConf.create({"kind": "none"} if method == "unguided" else row["guidance"])
    print(f"{method}: {OmegaConf.to_container(cfg.guidance)}", flush=True)
    evaluate.run(cfg)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--seeds", default="1000-1999", help="held-out seeds (disjoint from the sweeps')")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every finished one)")
    args = parser.parse_args(argv)
    rows = report.collect(args.runs)
    for method in args.methods or list(rows):
        if method not in rows:
            raise SystemExit(f"method {method!r} has no finished sweep in {args.runs}; finished: {sorted(rows)}")
        if not (args.runs / f"heldout-{method}" / "metrics.json").is_file():
            evaluate_pick(args.runs, method, rows[method], args.seeds, args.runs / "mnist-classifier.safetensors")


if __name__ == "__main__":
    main()
