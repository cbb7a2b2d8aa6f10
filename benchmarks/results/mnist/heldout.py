"""Re-measure every method's picked setting on held-out seeds (called by ``run.sh``).

The sweeps pick each method's best setting on seeds 0..N-1, so the picked FD is biased low by
the selection (the minimum over a grid of noisy estimates) and biased high by the small sample
(FD grows like 1/N at a fixed distribution). This script evaluates each pick once more with
``autoguide-eval`` on disjoint seeds (default 1000-1999: four times as many, none used in any
sweep) into ``runs/heldout-<method>/metrics.json``; ``report.py`` shows both and judges the
target on the held-out numbers. A method whose pick was already measured is skipped, so
rerunning resumes; one whose pick changed (more sweeps finished) is measured again.
``--prefix refine`` does the same for the 1,000-image sweeps of stage 6 (``runs/refine-*``), into
``runs/heldout-refine-<method>``; ``--prefix variant-main2x`` for stage 7's (the 2x main).

    python benchmarks/results/mnist/heldout.py --runs benchmarks/results/mnist/runs --seeds 1000-1999
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from autoguide.apps.config_tree import compose as compose_config
from autoguide.eval import evaluate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (this folder's module)

#: What makes two evaluations the same measurement (the output folder does not).
SAME_MEASUREMENT = ("model", "guidance", "sampler", "seeds", "class_labels", "precision", "metrics", "seed_sets")


def measurement(config: dict) -> dict:
    """The ``SAME_MEASUREMENT`` part of an evaluation config (the metrics' cache folder aside)."""
    settings = {k: config.get(k) for k in SAME_MEASUREMENT}
    # an unset option (null) is the same measurement as a config written before the option existed
    settings["metrics"] = {k: v for k, v in (settings["metrics"] or {}).items() if k != "cache_dir" and v is not None}
    return settings


def measurement_of(folder: Path) -> dict | None:
    """The measurement a finished evaluation folder holds, or None if it has not finished."""
    config, metrics = folder / "evaluate.yaml", folder / "metrics.json"
    if not (metrics.is_file() and config.is_file()):
        return None
    return measurement(OmegaConf.to_container(OmegaConf.load(config), resolve=True))


def same_measurement(wanted: dict, out: Path) -> Path | None:
    """Another folder of ``out``'s family (``heldout-*`` or ``final-*``) next to it whose finished
    evaluation is the measurement ``wanted`` (the sampler is deterministic per seed, so its
    metrics are this pick's), or None."""
    for folder in sorted(out.parent.glob(f"{out.name.split('-')[0]}-*")):
        if folder != out and measurement_of(folder) == wanted:
            return folder
    return None


def pick_config(
    out: Path, method: str, row: dict, seeds: str, classifier: Path, fd_infinity: Sequence[str] = ()
) -> DictConfig:
    """The ``autoguide-eval`` config that measures one picked setting into ``out``;
    ``fd_infinity``: ``(points, min_fraction)`` to report ``fd_inf_mnist`` too, or empty."""
    runs = out.parent
    extra = [f"metrics.fd_infinity={{points:{fd_infinity[0]},min_fraction:{fd_infinity[1]}}}"] if fd_infinity else []
    overrides = [
        *extra,
        f"model={row['main_model']}",
        f"seeds={seeds}",
        f"class_labels={row['class_labels']}",
        "batch_size=250",
        "device=cpu",
        "progress=false",
        f"cache_dir={runs / 'cache'}",
        f"extractors.mnist.path={classifier}",
        "metrics=mnist",
        "preview_images=0",
        f"output.dir={out}",
    ]
    cfg = compose_config("eval", overrides)
    with open_dict(cfg):
        cfg.sampler = OmegaConf.create(row["sampler"])
        cfg.guidance = OmegaConf.create({"kind": "none"} if method == "unguided" else row["guidance"])
    return cfg


def supersede(out: Path) -> Path:
    """Move the finished measurement of an earlier pick out of the way, to
    ``runs/superseded/<name>-<n>`` (kept, but no longer read by ``report.py``)."""
    parent = out.parent / "superseded"
    parent.mkdir(exist_ok=True)
    n = 1
    while (parent / f"{out.name}-{n}").exists():
        n += 1
    return out.rename(parent / f"{out.name}-{n}")


def evaluate_pick(
    out: Path, method: str, row: dict, seeds: str, classifier: Path, fd_infinity: Sequence[str] = ()
) -> None:
    """``autoguide-eval`` of one picked setting into ``out`` (``runs/heldout-[<prefix>-]<method>``),
    unless ``out`` already holds that measurement. A finished measurement of another setting (the
    pick changed after more sweeps finished) is superseded; an identical finished measurement in
    a sibling folder is copied instead of repeated."""
    cfg = pick_config(out, method, row, seeds, classifier, fd_infinity)
    wanted = measurement(OmegaConf.to_container(cfg, resolve=True))
    held = measurement_of(out)
    if held == wanted:
        return
    if held is not None:
        print(f"{method}: the pick changed; {out.name} moved to {supersede(out)}", flush=True)
    print(f"{method}: {OmegaConf.to_container(cfg.guidance)}", flush=True)
    done = same_measurement(wanted, out)
    if done is None:
        evaluate.run(cfg)
        return
    print(f"{method}: the same measurement is {done}; copied", flush=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    for name in ("evaluate.yaml", "metrics.json"):
        shutil.copy2(done / name, staging / name)
    (staging / "copied_from.txt").write_text(f"{done.name}\n")
    staging.rename(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--seeds", default="1000-1999", help="held-out seeds (disjoint from the sweeps')")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every finished one)")
    parser.add_argument(
        "--prefix",
        default="sweep",
        choices=report.STAGES,
        help="whose picks: the stage-3 sweeps (sweep-*), the 1,000-image ones (refine-*) or "
        "those with the 2x main (variant-main2x-*)",
    )
    parser.add_argument(
        "--family",
        default="heldout",
        choices=("heldout", "final"),
        help="output folders <family>-[<prefix>-]<method>: final for stage 8's 5,000-image measurement",
    )
    parser.add_argument(
        "--fd-infinity",
        nargs=2,
        metavar=("POINTS", "MIN_FRACTION"),
        default=(),
        help="also measure fd_inf_mnist (FD extrapolated to infinitely many images)",
    )
    args = parser.parse_args(argv)
    rows = report.collect(args.runs, args.prefix)
    for method in args.methods or list(rows):
        if method not in rows:
            raise SystemExit(f"method {method!r} has no finished sweep in {args.runs}; finished: {sorted(rows)}")
        out = report.heldout_folder(args.runs, method, args.prefix, args.family)
        evaluate_pick(
            out, method, rows[method], args.seeds, args.runs / "mnist-classifier.safetensors", args.fd_infinity
        )


if __name__ == "__main__":
    main()
