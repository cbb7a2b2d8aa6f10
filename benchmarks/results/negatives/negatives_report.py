"""``results.md`` and ``results.json`` of ``run.py``: the picks of every negative, with and
without APG, re-measured on held-out seeds, and which wins."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import selection
from steps import write_report

Result = Mapping[str, Any]

MNIST_COLUMNS = ("fd_mnist", "fd_inf_mnist", "precision_mnist", "recall_mnist")
TOY_COLUMNS = ("toy_logp", "toy_outliers", "toy_precision", "toy_recall")


def setting_text(row: Result) -> str:
    """``w 2.5, p=0.3, guide run@nimg EMA 0.05`` (the variant without its APG part)."""
    parts = [f"w {row['weight']:g}"]
    parts += [item for item in str(row.get("variant") or "").split(" ") if item and not item.startswith("apg=")]
    if row.get("guide_nimg") is not None:
        parts.append(f"guide {row['guide']} EMA {row['guide_std']:g}")
    return ", ".join(parts)


def cell(value: Any, key: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if key == "toy_outliers" else f"{value:.4g}"


def winner(dataset: str, results: Result) -> Result | None:
    """The best held-out entry: MNIST the lowest FD_inf; toy the highest log-density among
    those whose held-out recall is at least 95% of unguided's (the selection rule)."""
    measured = [e for e in results["negatives"] if "heldout" in e]
    if dataset == "mnist":
        return min(measured, key=lambda e: e["heldout"]["fd_inf_mnist"], default=None)
    chosen = selection.pick([e["heldout"] for e in measured], results["unguided"]["heldout"])
    return next((e for e in measured if e["heldout"] is chosen), None)


def table(dataset: str, results: Result) -> list[str]:
    """One markdown table: unguided, then every negative without and with APG."""
    columns = MNIST_COLUMNS if dataset == "mnist" else TOY_COLUMNS
    select_key = "fd_mnist" if dataset == "mnist" else "toy_logp"
    unguided = results["unguided"]
    lines = [
        f"| negative | APG | pick | {select_key} (selection) | "
        + " | ".join(f"{c} (held-out)" for c in columns)
        + " | network evaluations per denoiser call |",
        "|---" * (5 + len(columns)) + "|",
        f"| unguided | - | - | {cell(unguided['selection'][select_key], select_key)} | "
        + " | ".join(cell(unguided["heldout"].get(c), c) for c in columns)
        + " | 1 main |",
    ]
    for entry in results["negatives"]:
        apg = "eta 0" if entry["apg"] else "-"
        if "heldout" not in entry:
            lines.append(
                f"| {entry['label']} | {apg} | no setting kept the recall floor | - |"
                + " - |" * len(columns)
                + f" {entry['evaluations']} |"
            )
            continue
        held = entry["heldout"]
        lines.append(
            f"| {entry['label']} | {apg} | {setting_text(entry['selection'])} | "
            f"{cell(entry['selection'][select_key], select_key)} | "
            + " | ".join(cell(held.get(c), c) for c in columns)
            + f" | {entry['evaluations']} |"
        )
    return lines


def verdict(dataset: str, results: Result) -> str:
    best = winner(dataset, results)
    if best is None:
        return "No negative has a held-out measurement."
    held, ref = best["heldout"], results["unguided"]["heldout"]
    apg = " with APG" if best["apg"] else " without APG"
    if dataset == "mnist":
        return (
            f"**Wins on MNIST: {best['label']}{apg}** ({setting_text(best['selection'])}): held-out FD_inf "
            f"{held['fd_inf_mnist']:.2f} vs unguided {ref['fd_inf_mnist']:.2f} "
            f"({100 * (held['fd_inf_mnist'] / ref['fd_inf_mnist'] - 1):+.1f}%)."
        )
    return (
        f"**Wins on the toy: {best['label']}{apg}** ({setting_text(best['selection'])}): held-out log-density "
        f"{held['toy_logp']:.3f} vs unguided {ref['toy_logp']:.3f}, outliers {100 * held['toy_outliers']:.2f}% vs "
        f"{100 * ref['toy_outliers']:.2f}%, recall {held['toy_recall']:.3f} vs {ref['toy_recall']:.3f}."
    )


def section(name: str, results: Result | None) -> list[str]:
    """The markdown of one dataset: its setup, table and verdict (a note while not measured)."""
    title, setup = SECTIONS[name]
    if results is None:
        return [
            f"## {title}",
            "",
            f"Not measured yet: `python benchmarks/results/negatives/run.py --datasets {name}`.",
            "",
        ]
    return [f"## {title}", "", setup, "", *table(name, results), "", verdict(name, results), ""]


SECTIONS = {
    "mnist": (
        "MNIST-5k",
        (
            "Main model `mnist-s-cfg` trained for half its recipe (16.8 kimg), post-hoc EMA 0.10; guide "
            "`mnist-xs-guide-cfg` trained to T/2 of that main. Weights 1.5 and 2.5. Selection: seeds 0-249 (FD of 250 "
            "images, lowest wins); held-out: seeds 1000-1499, FD / precision / recall of 500 images and FD_inf (FD "
            "extrapolated to infinitely many images from 10 subsets of 50-100%: 250-500 images). EDM Heun sampler, 8 "
            "steps, a random class per seed."
        ),
    ),
    "toy": (
        "2D toy (class A of the two trees)",
        (
            "Main model `toy2d-main` (the paper's toy recipe: width 64, 16 Mi samples), post-hoc EMA 0.05; guide "
            "`toy2d-guide` (width 32, T/8). Weights 1.1, 1.25, 1.5, 2 and 3. Selection: seeds 0-9999; held-out: seeds "
            "10000-19999; exact metrics (`autoguide.eval.toy_metrics`); pick = the highest log-density that keeps "
            "95% of the unguided recall (`benchmarks/results/toy2d/selection.py`). EDM Heun sampler, 32 steps."
        ),
    ),
}


def markdown(results: Mapping[str, Result], revision: str) -> str:
    """``results.md`` from the datasets measured so far."""
    lines = [
        "# Which bad version guides best? Trained guide vs training-free negatives, +- APG",
        "",
        "Generated by `python benchmarks/results/negatives/run.py` (do not edit by hand; rerun it) on a shared 2-core "
        f"CPU, one torch thread per process; git {revision}; Python {platform.python_version()}.",
        "",
        "Each negative is swept over weights and its options on the selection seeds, without and with APG "
        "(`apg: {eta: 0}`: the part of `D_pos - D_neg` parallel to `D_pos` removed, per image); the pick is measured "
        "once more on held-out seeds. Cost: every guided denoiser call evaluates the positive and the negative (the "
        "same-network ones in one batch of twice the images), Heun's sampler makes 2 calls per step (1 on the last), "
        "so each guided row costs 2 network evaluations per call where unguided costs 1; the XS guide's forward costs "
        "about a third of the main's (`benchmarks/sample.py`: 48 vs 150 ms). The wall seconds of every setting are in "
        "`results-<dataset>.json` and the sweeps' `sweep.csv`, but were measured with two to four processes sharing "
        "the 2 cores, so they do not rank the costs.",
        "",
    ]
    for name in SECTIONS:
        lines += section(name, results.get(name))
    return "\n".join(lines)


def write(folder: Path, name: str, result: Result) -> None:
    """Write ``results-<name>.json`` into ``folder``, then ``results.md`` from every dataset's JSON there."""
    write_report(folder, "results", name, result, SECTIONS, markdown)
