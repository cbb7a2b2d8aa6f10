"""Compare unguided base, SIMS-guided and weight-space SIMS sampling of a SIMS folder
(``autoguide-sims-compare``, with ``autoguide-eval``'s evaluation).

Rows: the base model unguided; for every pair of ``summary.json`` (iteration, budget, EMA
std) the base guided by ``s = (1 + omega) s_base - omega s_synth`` for every ``omega``
(``guidance=sims``, Karras ``w = 1 + omega``), and every weight-space model
``theta_base + w' (theta_base - theta_synth)`` the pair lists, sampled unguided. All rows use
the same seeds, labels, sampler and metrics (``autoguide.eval``). Written to ``output.dir``:
``compare.csv`` (after every row), ``compare.json`` (the best row of each method by
``select``, and all rows) and ``compare.md`` (that table in Markdown).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoguide.core.typed_settings import ConfigError
from autoguide.eval.evaluate import Evaluation
from autoguide.eval.sweep_plots import best_row
from autoguide.io import write_csv_atomic, write_json_atomic, write_text_atomic
from autoguide.io.sims_pair import read_pair
from autoguide.runtime.process import ModelLoader
from autoguide.sample.guidance_spec import GuidanceSettings, build_guidance
from autoguide.sims.pipeline import SUMMARY_NAME

log = logging.getLogger(__name__)

SETTING_KEYS = ["method", "iteration", "budget_nimg", "ema_std", "omega", "weight"]
METHODS = ("unguided", "sims", "weight_space")


def settings(
    summary: Mapping[str, Any], omegas: Sequence[float], iterations: Sequence[int] | None
) -> list[dict[str, Any]]:
    """Every row to evaluate: ``{method, iteration, budget_nimg, ema_std, omega, weight, model, guidance}``."""
    base = summary["base"]
    rows = [{"method": "unguided", "model": base, "guidance": None}]
    for entry in summary["iterations"]:
        if iterations is not None and entry["iteration"] not in iterations:
            continue
        for path in entry["pairs"]:
            pair = read_pair(path, check_hashes=True)
            where = {"iteration": pair.iteration, "budget_nimg": pair.budget_nimg, "ema_std": pair.ema_std}
            rows += [
                {
                    "method": "sims",
                    **where,
                    "omega": float(o),
                    "model": str(pair.positive),
                    "guidance": pair.guidance(o),
                }
                for o in omegas
            ]
            rows += [
                {"method": "weight_space", **where, "weight": w, "model": str(p), "guidance": None}
                for w, p in sorted(pair.weight_space.items())
            ]
    return rows


def markdown(best: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """The best row of each method as a Markdown table."""
    lines = [
        "| method | iteration | budget (images) | EMA std | omega / w' | " + " | ".join(metrics) + " |",
        "|---" * (5 + len(metrics)) + "|",
    ]
    for method, row in best.items():
        knob = row.get("omega") if method == "sims" else row.get("weight")
        cells = [
            method,
            row.get("iteration"),
            row.get("budget_nimg"),
            row.get("ema_std"),
            knob,
            *(f"{row[m]:.4g}" for m in metrics),
        ]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def read_summary(sims_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` of a SIMS folder; an error saying how to make it."""
    path = Path(sims_dir) / SUMMARY_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(
            f"{path}: cannot read the SIMS summary ({err}); run autoguide-sims out_dir={sims_dir} first"
        ) from err


def run_compare(
    sims_dir: Path,
    omegas: Sequence[float],
    iterations: Sequence[int] | None,
    select: str,
    evaluation: Evaluation,
    out_dir: Path,
) -> dict[str, Any]:
    """Evaluate every setting of the SIMS folder; write ``compare.csv`` (after every row),
    ``compare.json`` and ``compare.md``; return ``{"select", "best": {method: row}, "rows", ...}``."""
    summary = read_summary(sims_dir)
    todo = settings(summary, [float(o) for o in omegas], iterations)
    metrics = evaluation.metric_names()
    if select not in metrics:
        raise ConfigError(f"select={select!r} is not measured here; the metrics are {metrics}")
    rows = []
    for setting in todo:
        load = ModelLoader(evaluation.device)  # per row: only this row's models stay in memory
        net = load(setting["model"])
        terms = build_guidance(GuidanceSettings.from_mapping(setting["guidance"]), load)
        result = evaluation(net, terms)["metrics"]
        negative = setting["guidance"]["model"] if setting["guidance"] else None
        rows.append(
            {**{k: setting.get(k) for k in SETTING_KEYS}, **result, "model": setting["model"], "negative": negative}
        )
        log.info("%s", {k: rows[-1][k] for k in [*SETTING_KEYS, select] if rows[-1][k] is not None})
        write_csv_atomic(out_dir / "compare.csv", rows, [*SETTING_KEYS, *metrics, "model", "negative"])
    best = {
        m: dict(best_row([r for r in rows if r["method"] == m], select))
        for m in METHODS
        if any(r["method"] == m for r in rows)
    }
    report = {"select": select, "best": best, "rows": rows, "feature_networks": evaluation.evaluator.info()}
    write_json_atomic(out_dir / "compare.json", report)
    write_text_atomic(out_dir / "compare.md", markdown(best, metrics))
    return report
