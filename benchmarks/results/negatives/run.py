"""Which bad version of the model guides best? Trained guide vs training-free negatives, with
and without APG, on MNIST-5k and the 2D toy. One command, from anywhere:

    python benchmarks/results/negatives/run.py          # reuses finished runs and sweeps in runs/
    python benchmarks/results/negatives/run.py --fresh  # deletes runs/ first

Every step is one of the project's commands (``train.py``, ``autoguide-mnist-classifier``,
``autoguide-sweep``, run with this Python), one torch thread each; runs, sweeps and logs go to
``runs/`` here; ``results.md`` and ``results.json`` are written at the end. Per dataset:

1. Train the MNIST main model (``mnist-s-cfg`` at half its recipe, snapshots
   every 1 kimg), its XS guide (``mnist-xs-guide-cfg`` to a quarter of the recipe: T/2 of the
   main), the toy main model (``toy2d-main``: the paper's toy recipe) and its width-32 guide
   (``toy2d-guide``, T/8).
2. Sweep the negatives (``Dataset.negatives``): the trained guide; the main run itself
   read with a shorter EMA, or at an earlier snapshot (post hoc EMA: free); layer skip; dropout
   kept on at sampling; each swept over its weights and options, without APG and with APG
   (``eta = 0``: the part of ``D_pos - D_neg`` parallel to ``D_pos`` removed), on the selection
   seeds. Picks: MNIST the lowest FD; toy the highest exact log-density among settings that
   keep 95% of the unguided recall (``benchmarks/results/toy2d/selection.py``).
3. Each pick, and unguided, once more on held-out seeds: MNIST FD, FD_inf, precision and recall
   of 500 images; toy the exact metrics of 10,000 samples. The cost of each is given as network
   evaluations per denoiser call (the wall seconds of runs sharing the cores do not rank it).
4. Update rules (``RULES``: TCFG, FDG, MAMBO-G, a weight schedule, FBG, CFG-Zero*, and plain
   guidance) on the trained guide and on CFG (MNIST; the toy's main model has no labels, so the
   toy has the guide only; FDG needs images, so not on the toy), straight on held-out seeds
   (``RULE_SEEDS``) at the table's weights plus a larger one (``RULE_WEIGHTS``; MNIST the larger
   one only), no selection: ``rules.md`` and ``rules-<dataset>.json``.

``--part negatives`` or ``--part rules`` runs only steps 1-3 or 1 and 4.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "toy2d")]

import negatives_report  # noqa: E402  (this folder's module)
import rules_report  # noqa: E402  (this folder's module)
import selection  # noqa: E402  (the toy rule: best log-density that keeps 95% of the unguided recall)
from steps import call, listing, number  # noqa: E402  (shared by the results scripts)

from autoguide.diffusion import edm_sigma_steps  # noqa: E402
from autoguide.eval.sweep import option_product, variant_label  # noqa: E402
from autoguide.sample.weights import feedback_from_times  # noqa: E402

CLASSIFIER = RUNS / "mnist-classifier.safetensors"
APG_AXIS = [None, {"eta": 0.0}]
MNIST_TRAIN = ["train.checkpoint_kimg=2", "~callbacks.sample_grid"]
TRAININGS = {
    "mnist-main": ["experiment=mnist-s-cfg", *MNIST_TRAIN, "train.duration_fraction=0.5", "train.snapshot_kimg=1"],
    "mnist-xs-guide": [
        "experiment=mnist-xs-guide-cfg",
        *MNIST_TRAIN,
        "train.duration_fraction=0.25",
        "train.snapshot_kimg=0.5",
    ],
    "toy-main": ["experiment=toy2d-main"],
    "toy-xs-guide": ["experiment=toy2d-guide"],
}


@dataclass(frozen=True)
class Negative:
    """One bad version: the sweep overrides that make it, the term options swept besides the
    weight (``grid.term``, APG added), and its network evaluations per denoiser call."""

    tag: str
    label: str
    overrides: tuple[str, ...]
    term: dict[str, list[Any]] = field(default_factory=dict)
    evaluations: str = "2 main"


@dataclass(frozen=True)
class Dataset:
    """Where and how a dataset's negatives are measured."""

    name: str
    trainings: tuple[str, ...]  # runs of TRAININGS, the main first
    main_std: float
    weights: tuple[float, ...]
    sampling: tuple[str, ...]
    selection_seeds: str
    heldout_seeds: str
    heldout_extra: tuple[str, ...]
    negatives: tuple[Negative, ...]


def guide_run(run: str, times: str, std: float) -> tuple[str, ...]:
    """Autoguidance by the EMA ``std`` of run ``run`` at ``times`` (null: its end)."""
    return (
        "guidance=autoguidance",
        f"guides.runs=[{RUNS / run}]",
        f"guides.times=[{times}]",
        f"grid.guide_std=[{std}]",
    )


MNIST = Dataset(
    name="mnist",
    trainings=("mnist-main", "mnist-xs-guide"),
    main_std=0.10,
    weights=(1.5, 2.5),
    sampling=(
        "metrics=mnist",
        f"extractors.mnist.path={CLASSIFIER}",
        f"cache_dir={RUNS / 'cache'}",
        "select=fd_mnist",
        "class_labels=random",
        "sampler.num_steps=8",
        "batch_size=250",
        "device=cpu",
        "progress=false",
    ),
    selection_seeds="0-249",
    heldout_seeds="1000-1499",
    heldout_extra=("metrics.fd_infinity={points:10,min_fraction:0.5}",),
    negatives=(
        Negative(
            "xs-guide",
            "trained XS guide (T/2, EMA 0.10)",
            guide_run("mnist-xs-guide", "null", 0.10),
            evaluations="1 main + 1 XS",
        ),
        Negative("short-ema", "same run, shorter EMA (0.05)", guide_run("mnist-main", "null", 0.05)),
        Negative("early", "same run, early snapshot (T/4, EMA 0.10)", guide_run("mnist-main", "0.25", 0.10)),
        Negative(
            "layer-skip",
            "layer skip (the bottleneck block dec.8x8_in0)",
            ("guidance=layer_skip",),
            evaluations="1 main + 1 main without the block (one batch)",
        ),
        Negative(
            "dropout",
            "dropout kept on (p 0.1, every block)",
            ("guidance=dropout", "guidance.p=0.1"),
            evaluations="2 main (one batch)",
        ),
    ),
)
TOY = Dataset(
    name="toy",
    trainings=("toy-main", "toy-xs-guide"),
    main_std=0.05,
    weights=(1.1, 1.25, 1.5, 2.0, 3.0),
    sampling=(
        "metrics=toy2d",
        "select=toy_logp",
        "class_labels=none",
        "metrics.toy.classes=A",
        "device=cpu",
        "progress=false",
        "batch_size=2000",
    ),
    selection_seeds="0-9999",
    heldout_seeds="10000-19999",
    heldout_extra=(),
    negatives=(
        Negative(
            "xs-guide",
            "trained width-32 guide (T/8, EMA 0.05)",
            guide_run("toy-xs-guide", "null", 0.05),
            evaluations="1 main + 1 width-32",
        ),
        Negative("short-ema", "same run, shorter EMA (0.01)", guide_run("toy-main", "null", 0.01)),
        Negative("early", "same run, early snapshot (T/4, EMA 0.05)", guide_run("toy-main", "0.25", 0.05)),
        Negative(
            "layer-skip",
            "layer skip (hidden layer 2 / 3 of 4)",
            ("guidance=layer_skip",),
            {"blocks": [["layer2"], ["layer3"]]},
            evaluations="1 main + 1 main without the layer (one batch)",
        ),
        Negative(
            "dropout",
            "dropout kept on (p 0.1 / 0.3, every layer)",
            ("guidance=dropout",),
            {"p": [0.1, 0.3]},
            evaluations="2 main (one batch)",
        ),
    ),
)
DATASETS = (MNIST, TOY)


@dataclass(frozen=True)
class Rule:
    """One update rule as term options (``grid.term``, one value each). ``feedback``: FBG, whose
    weight is its own: the term's weight is 1 and each table weight is FBG's ``max_weight``."""

    tag: str
    label: str
    term: dict[str, Any] = field(default_factory=dict)
    feedback: bool = False


#: FBG's pi and times (Koulischer et al. 2025): lambda starts at 1 / pi; the offset alone brings
#: it to 3 by t0 (fraction of the steps from the end); the temperature from the step variance at t1.
FBG_TIMES = {"pi": 0.95, "t0": 0.5, "t1": 0.4}
RULES = (
    Rule("plain", "plain guidance"),
    Rule("zero-star", "CFG-Zero* (flow space, s* only)", {"zero_star": {"space": "flow"}}),
    Rule("tcfg", "TCFG (eps space)", {"tcfg": {"space": "eps"}}),
    Rule("fdg", "FDG (2 bands: high w, low 1 + (w - 1) / 2)", {"fdg": {"weights": [1.0, 0.5]}}),
    Rule("mambo", "MAMBO-G (alpha 8, flow space)", {"mambo": {"alpha": 8.0, "space": "flow"}}),
    Rule(
        "ramp",
        "schedule: w - 1 ramped linearly 0 -> 2 over log sigma 80 -> 0.002",
        {"schedule": {"shape": "linear", "start": 0.0, "end": 2.0}},
    ),
    Rule("fbg", "FBG (pi 0.95, t0 0.5, t1 0.4), weight <= w", feedback=True),
)
#: The weights of the negatives table plus a larger one. MNIST (every setting samples with the S model on a
#: shared 2-core CPU): only the larger weight, on half the held-out seeds, without CFG-Zero*.
RULE_WEIGHTS = {"mnist": (4.0,), "toy": (1.1, 1.25, 1.5, 2.0, 3.0, 5.0)}
RULE_SKIP = {"mnist": ("zero-star",), "toy": ("fdg",)}
RULE_SEEDS = {"mnist": "1000-1249", "toy": "10000-19999"}
RULE_EXTRA = {
    "mnist": ("metrics.fd_infinity={points:10,min_fraction:0.6}",),
    "toy": (),
}  # FD_inf: subsets above 128 features
#: The negatives the rules are measured on, per dataset: (tag, label, sweep overrides).
RULE_NEGATIVES = {
    "mnist": (
        ("xs-guide", "trained XS guide (T/2, EMA 0.10)", guide_run("mnist-xs-guide", "null", 0.10)),
        ("cfg", "CFG (null label)", ("guidance=cfg", "guides.runs=[]")),
    ),
    "toy": (("xs-guide", "trained width-32 guide (T/8, EMA 0.05)", guide_run("toy-xs-guide", "null", 0.05)),),
}


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar (``null``, lists, ``{k:v}``)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value)


def train(name: str) -> None:
    """Train run ``name`` of ``TRAININGS`` unless its final model exists (train.py resumes)."""
    if not (RUNS / name / "final.safetensors").is_file():
        call(
            [
                sys.executable,
                "train.py",
                *TRAININGS[name],
                f"paths.runs_dir={RUNS}",
                "logger=csv",
                "seed=0",
                f"name={name}",
            ],
            RUNS / "logs" / f"train-{name}.log",
        )


def sweep(tag: str, overrides: Sequence[str], finished_only: bool = False) -> list[dict[str, Any]] | None:
    """``autoguide-sweep`` into ``runs/sweeps/<tag>`` unless the same command finished there; its rows
    (``finished_only``: ``None`` instead of running it)."""
    out = RUNS / "sweeps" / tag
    command = [sys.executable, "-m", "autoguide.apps.sweep", *overrides, f"output.dir={out}"]
    stamp = out / "command.json"
    if not ((out / "best.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == command[1:]):
        if finished_only:
            return None
        call(command, RUNS / "logs" / f"sweep-{tag}.log")
        stamp.write_text(json.dumps(command[1:]))
    with (out / "sweep.csv").open() as f:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def term_axes(negative: Negative) -> dict[str, list[Any]]:
    """The term options ``negative`` is swept over besides the weight: its own, then APG."""
    return {**negative.term, "apg": APG_AXIS}


def variants(negative: Negative) -> list[dict[str, Any]]:
    """The term options of every swept variant, in the sweep's order."""
    return option_product(term_axes(negative))


def base_overrides(dataset: Dataset, seeds: str) -> list[str]:
    return [
        f"main.run={RUNS / dataset.trainings[0]}",
        f"grid.main_std=[{dataset.main_std}]",
        f"seeds={seeds}",
        *dataset.sampling,
    ]


def term_override(options: dict[str, Any]) -> str:
    return "grid.term={" + ",".join(f"{k}:{hydra_value(v)}" for k, v in options.items()) + "}"


def choose(dataset: Dataset, rows: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, Any] | None:
    """The pick among ``rows``: MNIST the lowest FD; toy the toy2d rule (recall floor)."""
    if dataset.name == "mnist":
        return min(rows, key=lambda r: r["fd_mnist"], default=None)
    return selection.pick(rows, reference)


def measure(dataset: Dataset, report: Callable[[dict[str, Any]], None], only: Sequence[str] | None = None) -> None:
    """Selection sweeps, picks and held-out measurements of one dataset (of its negatives
    ``only``, if given); ``report`` gets the results so far after each negative."""
    select_base = base_overrides(dataset, dataset.selection_seeds)
    heldout_base = [*base_overrides(dataset, dataset.heldout_seeds), *dataset.heldout_extra]
    unguided = ["guidance=cfg", "guides.runs=[]", "grid.weight=[1.0]"]
    (reference,) = sweep(f"{dataset.name}-unguided", [*select_base, *unguided])
    (heldout_reference,) = sweep(f"{dataset.name}-heldout-unguided", [*heldout_base, *unguided])
    results: dict[str, Any] = {"unguided": {"selection": reference, "heldout": heldout_reference}, "negatives": []}
    for negative in (n for n in dataset.negatives if only is None or n.tag in only):
        rows = sweep(
            f"{dataset.name}-{negative.tag}",
            [
                *select_base,
                *negative.overrides,
                f"grid.weight={listing(dataset.weights)}",
                term_override(term_axes(negative)),
            ],
        )
        options = {variant_label(v): v for v in variants(negative)}  # a row's variant label -> its term options
        for with_apg in (False, True):
            tried = [r for r in rows if (options[r["variant"]]["apg"] is not None) == with_apg]
            pick = choose(dataset, tried, reference)
            entry: dict[str, Any] = {
                "tag": negative.tag,
                "label": negative.label,
                "apg": with_apg,
                "evaluations": negative.evaluations,
                "tried": [{k: r[k] for k in ("weight", "variant", *metric_keys(dataset))} for r in tried],
            }
            if pick is not None:
                point = {k: [v] for k, v in options[pick["variant"]].items()}
                guide = [o for o in negative.overrides if not o.startswith(("guides.times", "grid.guide_std"))]
                if pick["guide_nimg"] is not None:
                    guide += [f"guides.times=[{int(pick['guide_nimg'])}]", f"grid.guide_std=[{pick['guide_std']}]"]
                tag = f"{dataset.name}-heldout-{negative.tag}-{'apg' if with_apg else 'plain'}"
                (heldout,) = sweep(
                    tag, [*heldout_base, *guide, f"grid.weight=[{pick['weight']}]", term_override(point)]
                )
                entry.update(selection=pick, heldout=heldout)
            results["negatives"].append(entry)
        report(results)


def rule_axes(dataset: Dataset, rule: Rule) -> dict[str, list[Any]]:
    """``grid.term`` of ``rule``: its options, one value each; FBG one value per table weight."""
    if not rule.feedback:
        return {k: [v] for k, v in rule.term.items()}
    steps = edm_sigma_steps(sampler_steps(dataset), 0.002, 80.0, 7.0).tolist()
    options = []
    for weight in RULE_WEIGHTS[dataset.name]:
        fbg = feedback_from_times(sigma_steps=steps, max_weight=weight, **FBG_TIMES)
        options.append({"pi": fbg.pi, "temp": round(fbg.temp, 6), "offset": round(fbg.offset, 6), "max_weight": weight})
    return {"fbg": options}


def sampler_steps(dataset: Dataset) -> int:
    """The sampler's step count of ``dataset`` (its ``sampler.num_steps`` override, else EDM's 32)."""
    return next((int(o.split("=")[1]) for o in dataset.sampling if o.startswith("sampler.num_steps=")), 32)


def measure_rules(
    dataset: Dataset, only: Sequence[str] | None = None, rules: Sequence[str] | None = None, finished_only: bool = False
) -> dict[str, Any]:
    """Every rule (of ``rules``, if given) on every rule negative (of ``only``) of ``dataset`` at
    ``RULE_WEIGHTS``, on the held-out seeds; ``finished_only``: only the sweeps already finished."""
    heldout_base = [*base_overrides(dataset, RULE_SEEDS[dataset.name]), *RULE_EXTRA[dataset.name]]
    unguided = sweep(
        f"{dataset.name}-rules-unguided",
        [*heldout_base, "guidance=cfg", "guides.runs=[]", "grid.weight=[1.0]"],
        finished_only,
    )
    results: dict[str, Any] = {
        "unguided": unguided and unguided[0],
        "weights": list(RULE_WEIGHTS[dataset.name]),
        "seeds": RULE_SEEDS[dataset.name],
        "negatives": [],
    }
    for tag, label, overrides in RULE_NEGATIVES[dataset.name]:
        if only is not None and tag not in only:
            continue
        entry: dict[str, Any] = {"tag": tag, "label": label, "rules": []}
        for rule in RULES:
            if rule.tag in RULE_SKIP[dataset.name] or (rules is not None and rule.tag not in rules):
                continue
            axes = rule_axes(dataset, rule)
            weights = [1.0] if rule.feedback else RULE_WEIGHTS[dataset.name]
            extra = [term_override(axes)] if axes else []
            rows = sweep(
                f"{dataset.name}-rules-{tag}-{rule.tag}",
                [*heldout_base, *overrides, f"grid.weight={listing(weights)}", *extra],
                finished_only,
            )
            if rows is None:
                continue
            if rule.feedback:
                options = {variant_label(v): v for v in option_product(axes)}
                for row in rows:
                    row["weight"] = options[row["variant"]]["fbg"]["max_weight"]
            entry["rules"].append(
                {
                    "tag": rule.tag,
                    "label": rule.label,
                    "term": axes,
                    "rows": [
                        {k: r.get(k) for k in ("weight", "variant", *metric_keys(dataset), "fd_inf_mnist") if k in r}
                        for r in rows
                    ],
                }
            )
        results["negatives"].append(entry)
    return results


def metric_keys(dataset: Dataset) -> tuple[str, ...]:
    if dataset.name == "mnist":
        return ("fd_mnist", "precision_mnist", "recall_mnist")
    return ("toy_logp", "toy_outliers", "toy_precision", "toy_recall")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="delete runs/ first: everything from scratch")
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=[d.name for d in DATASETS],
        default=[d.name for d in DATASETS],
        help="measure only these (two processes can share the work); the other's results are kept",
    )
    parser.add_argument(
        "--part",
        choices=["all", "negatives", "rules"],
        default="all",
        help="negatives: the negatives table (steps 1-3); rules: the update rules (steps 1 and 4)",
    )
    parser.add_argument("--rules", nargs="+", default=None, help="measure only these update rules (tags of RULES)")
    parser.add_argument("--finished-only", action="store_true", help="rules report from the sweeps finished so far")
    parser.add_argument(
        "--negatives",
        nargs="+",
        default=None,
        help="measure only these negatives (tags), e.g. to share a "
        "dataset between two processes; a last run without it collects every finished sweep into the results",
    )
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(exist_ok=True)
    if not CLASSIFIER.is_file():
        call(
            [
                sys.executable,
                "-m",
                "autoguide.apps.mnist_classifier",
                "train",
                "--out",
                str(CLASSIFIER),
                "--device",
                "cpu",
            ],
            RUNS / "logs" / "classifier.log",
        )
    for dataset in (d for d in DATASETS if d.name in args.datasets):
        for name in () if args.finished_only else dataset.trainings:
            train(name)
        if args.part in ("all", "negatives"):
            measure(
                dataset, lambda result, name=dataset.name: negatives_report.write(HERE, name, result), args.negatives
            )
        if args.part in ("all", "rules"):
            rules_report.write(
                HERE, dataset.name, measure_rules(dataset, args.negatives, args.rules, args.finished_only)
            )


if __name__ == "__main__":
    main()
