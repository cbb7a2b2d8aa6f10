"""Collect the MNIST-5k guidance comparison into ``results.md``, ``results.json`` and
``grids.png`` (called by ``run.sh``; rerunning it only rereads the run folder).

Every method's row is the best setting of its sweep by FD on the project's MNIST classifier
features (``autoguide-sweep``'s ``best.json``; SIMS: ``python -m autoguide.sims.compare``'s
``compare.json``). "Unguided" is the ``w = 1`` point. The FD change is
``(FD_method - FD_unguided) / FD_unguided``. The issue's target: autoguidance lowers FD by at
least 30% against unguided and beats the best CFG row.

``--grids 1`` also samples ``grids.png``: one panel per method, each with the same seeds and
classes (classes 0-9 down the rows, ``--grid-seeds`` seeds across), with the method's best
setting and the evaluation's sampler.

    python benchmarks/results/mnist/report.py --runs benchmarks/results/mnist/runs --grids 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from autoguide.sample.seeds import parse_seeds

HERE = Path(__file__).resolve().parent
METHODS = ["unguided", "cfg", "autoguidance", "pag", "seg", "icg", "tsg", "sims"]
TITLES = {
    "unguided": "Unguided", "cfg": "CFG (null label)", "autoguidance": "Autoguidance (XS guide, T/8)",
    "pag": "PAG", "seg": "SEG", "icg": "ICG", "tsg": "TSG", "sims": "SIMS",
}
METRICS = ["fd_mnist", "precision_mnist", "recall_mnist"]
TARGET_REDUCTION = 0.30


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, mode) as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def sweep_row(runs: Path, method: str) -> dict[str, Any] | None:
    """The best row of ``sweep-<method>`` plus every weight tried, or None if not finished."""
    folder = runs / f"sweep-{method}"
    if not (folder / "best.json").is_file():
        return None
    best = json.loads((folder / "best.json").read_text())
    config = yaml.safe_load((folder / "sweep.yaml").read_text())
    tried = [
        {"weight": float(r["weight"]), "guide_std": None if r["guide_std"] == "" else float(r["guide_std"]),
         **{m: float(r[m]) for m in METRICS}, "seconds": float(r["seconds"])}
        for r in read_csv(folder / "sweep.csv")
    ]
    guidance = dict(config["guidance"])
    guidance["weight"] = float(best["weight"])
    if best.get("guide_model"):
        guidance["model"] = best["guide_model"]
    return {
        "method": method, "weight": float(best["weight"]), "guide_std": best.get("guide_std"),
        "main_model": best["main_model"], "main_nimg": best["main_nimg"], "guide_model": best.get("guide_model"),
        "guide_nimg": best.get("guide_nimg"), **{m: float(best[m]) for m in METRICS},
        "guidance": guidance, "tried": tried, "sampler": config["sampler"], "seeds": config["seeds"],
        "class_labels": config["class_labels"],
    }


def sims_row(runs: Path) -> dict[str, Any] | None:
    """The best SIMS-guided row of ``sims/compare/compare.json`` (weight ``w = 1 + omega``)."""
    path = runs / "sims" / "compare" / "compare.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    config = yaml.safe_load((runs / "sims" / "compare" / "compare.yaml").read_text())
    best = report["best"]["sims"]
    tried = [{"weight": 1 + float(r["omega"]), "omega": float(r["omega"]), **{m: float(r[m]) for m in METRICS}}
             for r in report["rows"] if r["method"] == "sims"]
    unguided = report["best"].get("unguided")
    return {
        "method": "sims", "weight": 1 + float(best["omega"]), "omega": float(best["omega"]),
        "budget_nimg": best["budget_nimg"], "ema_std": best["ema_std"], "main_model": best["model"],
        "guide_model": best["negative"], **{m: float(best[m]) for m in METRICS},
        "guidance": {"kind": "sims", "omega": float(best["omega"]), "interval": None, "model": best["negative"]},
        "tried": tried, "sampler": config["sampler"], "seeds": config["seeds"], "class_labels": config["class_labels"],
        "unguided_check": None if unguided is None else {m: float(unguided[m]) for m in METRICS},
    }


def collect(runs: Path) -> dict[str, dict[str, Any]]:
    rows = {m: sweep_row(runs, m) for m in METHODS if m != "sims"}
    rows["sims"] = sims_row(runs)
    return {m: r for m, r in rows.items() if r is not None}


def verdict(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences: the issue's target and every method that does not beat unguided FD."""
    lines = []
    base = rows.get("unguided")
    if base is None:
        return ["No unguided row yet."]
    ag, cfg = rows.get("autoguidance"), rows.get("cfg")
    if ag is not None:
        reduction = 1 - ag["fd_mnist"] / base["fd_mnist"]
        met_fd = reduction >= TARGET_REDUCTION
        met_cfg = cfg is not None and ag["fd_mnist"] < cfg["fd_mnist"]
        met = "MET" if met_fd and met_cfg else "NOT MET"
        cfg_text = "no CFG row yet" if cfg is None else f"best CFG FD {cfg['fd_mnist']:.2f}"
        lines.append(
            f"**Target {met}.** Autoguidance lowers FD by {100 * reduction:.1f}% against unguided "
            f"(target >= {100 * TARGET_REDUCTION:.0f}%: {'yes' if met_fd else 'no'}) and "
            f"{'beats' if met_cfg else 'does not beat'} the best CFG ({cfg_text})."
        )
    for method, row in rows.items():
        if method == "unguided":
            continue
        if row["fd_mnist"] >= base["fd_mnist"]:
            lines.append(f"{TITLES[method]} does not help here: its best swept weight gives FD {row['fd_mnist']:.2f} "
                         f">= unguided {base['fd_mnist']:.2f}.")
    return lines


def setting_text(row: dict[str, Any]) -> str:
    if row["method"] == "unguided":
        return "w = 1"
    if row["method"] == "sims":
        return f"omega {row['omega']:g} (w {row['weight']:g}), budget {row['budget_nimg']} img, neg. EMA {row['ema_std']}"
    text = f"w {row['weight']:g}"
    if row.get("guide_std") is not None:
        text += f", guide EMA {row['guide_std']:g} @ {row['guide_nimg']} img"
    return text


def tried_text(row: dict[str, Any]) -> str:
    def one(t: dict[str, Any]) -> str:
        key = f"{t['weight']:g}" + ("" if t.get("guide_std") is None else f"/{t['guide_std']:g}")
        return f"{key}: {t['fd_mnist']:.1f}"
    return "; ".join(one(t) for t in row["tried"])


def markdown(rows: dict[str, dict[str, Any]], info: dict[str, Any]) -> str:
    base = rows.get("unguided")
    out = ["# MNIST-5k: guidance methods compared", "",
           "Generated by `benchmarks/results/mnist/run.sh` (do not edit by hand; rerun it).", ""]
    out += ["## Setup", ""] + [f"- {line}" for line in info["setup"]] + [""]
    out += ["## Results", "",
            "Best swept setting per method, chosen by FD (lower is better). FD / precision / recall on the "
            "penultimate features of the project's MNIST classifier, against all 5,000 MNIST-5k digits. "
            "ΔFD is relative to unguided. *Tried* lists `weight[/guide EMA std]: FD` of every setting.", "",
            "| method | best setting | FD | ΔFD | precision | recall | tried |", "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        row = rows.get(method)
        if row is None:
            out.append(f"| {TITLES[method]} | not run | | | | | |")
            continue
        delta = "" if base is None or method == "unguided" else f"{100 * (row['fd_mnist'] / base['fd_mnist'] - 1):+.1f}%"
        out.append(f"| {TITLES[method]} | {setting_text(row)} | {row['fd_mnist']:.2f} | {delta} | "
                   f"{row['precision_mnist']:.3f} | {row['recall_mnist']:.3f} | {tried_text(row)} |")
    out += ["", "## Verdict", ""] + [f"- {line}" for line in verdict(rows)] + [""]
    if base is not None:
        n = len(parse_seeds(base["seeds"]))
        out += ["## Caveats", "",
                f"- Every FD here is measured on {n} generated images; FD is biased upward at small sample counts "
                "(128-dimensional features), so compare the rows with each other, not with FDs from other sample sizes.",
                "- Weights were swept on a coarse grid (listed under *tried*); a method's best may lie between grid points.", ""]
    if "sims" in rows and rows["sims"].get("unguided_check") is not None:
        check = rows["sims"]["unguided_check"]
        out += [f"SIMS compare's own unguided row (same seeds, base rebuilt from the same snapshots): FD {check['fd_mnist']:.2f}.", ""]
    if info.get("wall"):
        out += ["## Wall times (this machine, shared 2-core CPU)", "", "| stage | seconds |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in info["wall"].items()] + [""]
    if info.get("grids"):
        out += ["## Samples", "", f"![grids](grids.png) {info['grids']}", ""]
    return "\n".join(out)


def wall_times(runs: Path) -> dict[str, int]:
    path = runs / "logs" / "wall_seconds.txt"
    if not path.is_file():
        return {}
    times: dict[str, int] = {}
    for line in path.read_text().split("\n"):
        if line.strip():
            name, seconds = line.split()
            times[name] = int(seconds)
    return times


def setup_lines(runs: Path, rows: dict[str, dict[str, Any]]) -> list[str]:
    from safetensors import safe_open

    lines = []
    for name in ("mnist-s-cfg", "mnist-xs-guide-cfg"):
        config_path = runs / name / "config.yaml"
        if config_path.is_file():
            cfg = yaml.safe_load(config_path.read_text())
            t = cfg["train"]
            lines.append(f"`{name}`: net {cfg['net']['model_channels']} ch x {cfg['net']['num_blocks']} blocks, "
                         f"{t['duration_mi']} Mi x {t['duration_fraction']} of images at batch {t['batch_size']}, "
                         f"label dropout {t['cond_drop_prob']}, lr_ref {t['lr_ref']}")
    classifier = runs / "mnist-classifier.safetensors"
    if classifier.is_file():
        with safe_open(str(classifier), "pt") as f:
            card = json.loads(f.metadata()["autoguide.mnist_classifier"])
        lines.append(f"Feature classifier: test accuracy {card['test_accuracy']:.4f} on the 500 held-out MNIST-5k digits")
    any_row = next(iter(rows.values()), None)
    if any_row is not None:
        s = any_row["sampler"]
        lines.append(f"Evaluation: seeds {any_row['seeds']} (one image each, class `{any_row['class_labels']}` per seed), "
                     f"EDM {s['solver']} sampler, {s['num_steps']} steps, sigma {s['sigma_min']}-{s['sigma_max']}, rho {s['rho']}; "
                     f"main model = post-hoc EMA std {rows.get('unguided', any_row).get('main_model', '').rsplit('-', 1)[-1].removesuffix('.safetensors')}")
    return lines


def sample_grids(rows: dict[str, dict[str, Any]], out: Path, seeds_per_class: int) -> str:
    """One panel per method: classes down the rows, the same seeds across, best settings."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoguide.sample import generate_images
    from autoguide.sample.config import build_guidance
    from autoguide.sample.generate import ModelLoader

    seeds = list(range(10 * seeds_per_class))
    classes = [s % 10 for s in seeds]
    load = ModelLoader(torch.device("cpu"))
    methods = [m for m in METHODS if m in rows]
    fig, axes = plt.subplots(1, len(methods), figsize=(1.1 * seeds_per_class * len(methods) + 0.5, 11.5))
    for ax, method in zip(axes if len(methods) > 1 else [axes], methods):
        row = rows[method]
        net = load(row["main_model"])
        terms = [] if method == "unguided" else build_guidance(row["guidance"], load)
        images = generate_images(net, seeds, classes, terms, batch_size=len(seeds), **row["sampler"])
        grid = images.clamp(-1, 1).add(1).div(2)[:, 0]  # [N, H, W]
        h, w = grid.shape[1:]
        # image i = seed i, class i % 10: row = class, column = i // 10
        panel = grid.reshape(seeds_per_class, 10, h, w).permute(1, 2, 0, 3).reshape(10 * h, seeds_per_class * w)
        ax.imshow(panel.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{TITLES[method]}\n{setting_text(row)}\nFD {row['fd_mnist']:.1f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".grids.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return f"Seeds {seeds[0]}-{seeds[-1]}, seed i has class i mod 10 (rows: classes 0-9), same in every panel."


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--grids", type=int, default=0, help="1: also sample grids.png")
    parser.add_argument("--grid-seeds", type=int, default=3, help="seeds per class in each panel")
    args = parser.parse_args(argv)
    rows = collect(args.runs)
    info: dict[str, Any] = {"setup": setup_lines(args.runs, rows), "wall": wall_times(args.runs)}
    if args.grids and rows:
        info["grids"] = sample_grids(rows, HERE / "grids.png", args.grid_seeds)
    elif (HERE / "grids.png").is_file():
        info["grids"] = "(from the previous run with --grids 1)"
    results = {"target": {"fd_reduction_vs_unguided": TARGET_REDUCTION, "beat_best_cfg": True},
               "verdict": verdict(rows), "rows": rows, **info}
    write_atomic(HERE / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_atomic(HERE / "results.md", markdown(rows, info))
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
