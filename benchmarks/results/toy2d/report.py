"""The picks of every method and the written outputs: ``results.json`` (everything, including
every sweep row) and ``results.md`` (headline table, target verdict, the whole sweep).

The figure's CFG panel is CFG at ``PAPER_CFG_WEIGHT``, the weight of the CFG picture of the
paper's toy (the EDM2 repository's toy demo uses guidance 4 for CFG, 3 for autoguidance), with
the negative's EMA length of best log-density at that weight; the table lists it next to the
rule's pick. The unguided and autoguidance panels are the rule's picks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import selection

from autoguide.io import write_text_atomic

Row = Mapping[str, Any]
METRICS = ["toy_logp", "toy_outliers", "toy_precision", "toy_recall"]
SETTING = ["main_std", "guide", "guide_std", "weight"]
PAPER_CFG_WEIGHT = 4.0
PAPER_AG_WEIGHT = 3.0
CFG_PAPER = f"CFG, w = {PAPER_CFG_WEIGHT:g} (paper's weight)"
AG_PAPER = f"autoguidance, w = {PAPER_AG_WEIGHT:g} (paper's weight)"
FIGURE_ROWS = [("unguided", "none"), (CFG_PAPER, "cfg"), ("autoguidance", "autoguidance")]
HEADLINE = ["unguided", "CFG", "autoguidance"]
EXTRA = [
    CFG_PAPER,
    AG_PAPER,
    "CFG, best log-density without recall floor",
    "autoguidance, best log-density without recall floor",
]


def picks(reference: Row, cfg_rows: Sequence[Row], ag_rows: Sequence[Row]) -> dict[str, Any]:
    """Every reported row by name, plus ``target`` (the issue's criterion on autoguidance)."""
    ag = selection.pick(ag_rows, reference)
    return {
        "unguided": reference,
        "CFG": selection.pick(cfg_rows, reference),
        "autoguidance": ag,
        CFG_PAPER: selection.at_weight(cfg_rows, PAPER_CFG_WEIGHT),
        AG_PAPER: selection.at_weight(ag_rows, PAPER_AG_WEIGHT),
        "CFG, best log-density without recall floor": selection.best_logp(cfg_rows),
        "autoguidance, best log-density without recall floor": selection.best_logp(ag_rows),
        "target": selection.target(reference, ag),
    }


def short_metrics(row: Row) -> str:
    """One line for a figure title: weight, log-density, outliers, recall."""
    return (
        f"w={float(row['weight']):g}  logp={float(row['toy_logp']):.2f}  "
        f"outliers={100 * float(row['toy_outliers']):.2f}%  recall={float(row['toy_recall']):.3f}"
    )


def fmt(value: Any, key: str) -> str:
    """A table cell: outliers in percent, other metrics with 4 decimals, settings as they are."""
    if value is None:
        return "-"
    if key == "toy_outliers":
        return f"{100 * float(value):.2f}%"
    if key in METRICS:
        return f"{float(value):.4f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(rows: Sequence[Row], keys: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """Markdown table lines of ``rows`` (first column ``names`` when given)."""
    head = ([""] if names else []) + list(keys)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows):
        cells = ([f"**{names[i]}**"] if names else []) + [fmt(row.get(k) if row else None, k) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(target: Mapping[str, Any], reference: Row, ag: Row | None) -> str:
    """The plain statement of whether the issue's target was met."""
    floor, cut = selection.RECALL_FLOOR, selection.MIN_OUTLIER_CUT
    if ag is None:
        return f"**Target NOT met**: no autoguidance setting keeps recall >= {floor:.0%} of unguided."
    word = "met" if target["met"] else "NOT met"
    return (
        f"**Target {word}.** Autoguidance cuts the outlier share from {fmt(reference['toy_outliers'], 'toy_outliers')} "
        f"to {fmt(ag['toy_outliers'], 'toy_outliers')} ({target['outlier_cut']:.1%} cut; required >= {cut:.0%}) "
        f"with recall {target['recall_ratio']:.1%} of unguided (required >= {floor:.0%})."
    )


def variant_lines(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    """One table row per recipe variant: its pick, the metrics and the target check."""
    head = [
        "variant",
        "unguided outliers / recall",
        "pick: guide, std, w, interval",
        *METRICS,
        "outlier cut",
        "recall ratio",
        "target",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        ref, row, t = v["reference"], v["pick"], v["target"]
        setting = (
            "-"
            if row is None
            else f"{row['guide']} {fmt(row['guide_std'], 'guide_std')} w={fmt(row['weight'], 'weight')}"
        )
        if row is not None and row["interval_hi"] is not None:
            setting += f", sigma in ({fmt(row['interval_lo'], 'i')}, {fmt(row['interval_hi'], 'i')}]"
        cells = [
            v["label"],
            f"{fmt(ref['toy_outliers'], 'toy_outliers')} / {fmt(ref['toy_recall'], 'toy_recall')}",
            setting,
            *[fmt(None if row is None else row[m], m) for m in METRICS],
            "-" if t["outlier_cut"] is None else f"{t['outlier_cut']:.1%}",
            "-" if t["recall_ratio"] is None else f"{t['recall_ratio']:.1%}",
            "met" if t["met"] else "not met",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(
    meta: Mapping[str, Any],
    result: Mapping[str, Any],
    sweeps: Mapping[str, Sequence[Row]],
    variants: Sequence[Mapping[str, Any]],
) -> str:
    """The text of results.md."""
    reference = result["unguided"]
    steps = "\n".join(f"| {name} | {s['seconds']} | `{s.get('command', '')}` |" for name, s in meta["steps"].items())
    lines = [
        "# toy2d: unguided vs CFG vs autoguidance (autoguidance paper, Fig. 1)",
        "",
        "Generated by `" + meta["command"] + "` (repository root); do not edit by hand.",
        f"Wall time of this invocation {meta['wall_seconds']:.0f} s (steps done by an earlier one show their own "
        f"times, marked 'earlier') on a {meta['cpu_count']}-core machine shared with other jobs (torch threads: "
        f"{meta['torch_threads']}); git {meta['git']}; Python {meta['python']}, torch {meta['torch']}.",
        "",
        "Class A of the two-tree mixture; every setting is measured on the same "
        f"{meta['num_seeds']} seeds (deterministic EDM Heun sampler, 32 steps, sigma_max 80) with the exact "
        "metrics of `autoguide.eval.toy_metrics`: mean ground-truth log-density `toy_logp` (exact samples: "
        "about 1.35), share of outliers `toy_outliers` (below the 1% quantile of log p_A over exact samples, "
        "so exact samples score 1%), precision and recall (k = 3) against exact samples. "
        "Models as in the paper's toy: energy-parametrised MP-MLPs (`net=toy-energy`: the network outputs "
        "log p, the denoiser is x + sigma^2 grad log p), 16 Mi samples at batch 4096, trained against the "
        "exact posterior mean. Main model: `toy2d-main` (class A only, i.e. p(x | A), width 64). "
        "CFG negative: `toy2d-cfg` (width 32, T/8, classes A and B without labels, i.e. p(x): the paper's "
        "CFG negative). Autoguidance guide: `toy2d-guide` (class A, width 32) trained T/8, read at T/8 and at T/16. "
        "EMA lengths are rebuilt post hoc; `std` is the EMA's relative standard deviation; "
        "`guide` is `<run>@<nimg>`.",
        "",
        f"**Rule** (`selection.py`, fixed before the runs): unguided = the main EMA length with the best "
        f"log-density; each guided method = its best log-density among settings (same main EMA) whose "
        f"recall is >= {selection.RECALL_FLOOR:.0%} of unguided. Target: autoguidance's outlier share "
        f"<= {1 - selection.MIN_OUTLIER_CUT:.0%} of unguided at that recall.",
        "",
        "## Result",
        "",
        *table([result[n] for n in HEADLINE], [*SETTING, *METRICS], HEADLINE),
        "",
        verdict(result["target"], reference, result["autoguidance"]),
        "",
        "Recipe variants that meet the target (section below): "
        + (", ".join(v["tag"] for v in variants if v["target"]["met"]) or "none")
        + ".",
        "",
        "Other settings for comparison (at the weights of the paper's toy demo, and the best "
        "log-density with no recall floor):",
        "",
        *table([result[n] for n in EXTRA], [*SETTING, *METRICS], EXTRA),
        "",
        "![fig1](fig1.png)",
        "",
        "fig1.png: (a) exact samples, (b) unguided, (c) CFG at the paper's weight 4, (d) autoguidance "
        "(the rule's pick); the first 3000 evaluation seeds; grey = log p_A, dashed red = the outlier level, "
        "blue = samples below it (outliers).",
        "",
        "## Recipe variants tried (same rule, smaller grids)",
        "",
        *variant_lines(variants),
        "",
        "## Steps",
        "",
        "| step | seconds | command |",
        "|---|---|---|",
        steps,
    ]
    columns = ["main_std", "guide", "guide_std", "weight", "interval_lo", "interval_hi", *METRICS]
    for name, rows in [*sweeps.items(), *((v["tag"], v["rows"]) for v in variants)]:
        lines += ["", f"## Sweep: {name} ({len(rows)} settings)", "", *table(rows, columns)]
    return "\n".join(lines) + "\n"


def write(
    out: Path,
    meta: Mapping[str, Any],
    result: Mapping[str, Any],
    sweeps: Mapping[str, Sequence[Row]],
    variants: Sequence[Mapping[str, Any]],
) -> None:
    """results.json and results.md in ``out``."""
    doc = {
        "meta": meta,
        "rule": {"recall_floor": selection.RECALL_FLOOR, "min_outlier_cut": selection.MIN_OUTLIER_CUT},
        "results": result,
        "variants": [{k: v for k, v in variant.items() if k != "rows"} for variant in variants],
        "sweeps": {**sweeps, **{v["tag"]: v["rows"] for v in variants}},
    }
    write_text_atomic(out / "results.json", json.dumps(doc, indent=1, default=str) + "\n")
    write_text_atomic(out / "results.md", markdown(meta, result, sweeps, variants))
