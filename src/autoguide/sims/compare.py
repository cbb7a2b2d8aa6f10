"""Compare unguided base, SIMS-guided and weight-space SIMS sampling of a SIMS folder
(Hydra app, ``conf/sims/compare.yaml``, built on ``autoguide-eval``'s config and evaluator).

    python -m autoguide.sims.compare sims_dir=runs/sims-mnist omega=[0.25,0.5,1,2] metrics=mnist seeds=0-4999

Rows: the base model unguided; for every pair of ``summary.json`` (iteration, budget, EMA
std) the base guided by ``s = (1 + omega) s_base - omega s_synth`` for every ``omega``
(``guidance=sims``, Karras ``w = 1 + omega``), and every weight-space model
``theta_base + w' (theta_base - theta_synth)`` the pair lists, sampled unguided. All rows use
the same seeds, labels, sampler and metrics (``autoguide.eval``). Written to ``output.dir``:
``compare.csv`` (after every row), ``compare.json`` (the best row of each method by
``select``, and all rows) and ``compare.md`` (that table in Markdown).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoguide.config_dir import config_dir
from autoguide.eval.evaluate import evaluate_model, json_text
from autoguide.eval.evaluator import Evaluator, check_model, metric_names
from autoguide.eval.sweep_plots import best_row
from autoguide.io import write_text_atomic
from autoguide.sample.config import build_guidance
from autoguide.sample.distributed import rank_from_env
from autoguide.sample.generate import ModelLoader, resolve_device
from autoguide.io.sims_pair import read_pair
from autoguide.sims.pipeline import SUMMARY_NAME

log = logging.getLogger(__name__)

SETTING_KEYS = ["method", "iteration", "budget_nimg", "ema_std", "omega", "weight"]
METHODS = ("unguided", "sims", "weight_space")


def settings(summary: Mapping[str, Any], omegas: Sequence[float], iterations: Sequence[int] | None) -> list[dict[str, Any]]:
    """Every row to evaluate: ``{method, iteration, budget_nimg, ema_std, omega, weight, model, guidance}``."""
    base = summary["base"]
    rows = [{"method": "unguided", "model": base, "guidance": None}]
    for entry in summary["iterations"]:
        if iterations is not None and entry["iteration"] not in iterations:
            continue
        for path in entry["pairs"]:
            pair = read_pair(path, check_hashes=True)
            where = {"iteration": pair.iteration, "budget_nimg": pair.budget_nimg, "ema_std": pair.ema_std}
            rows += [{"method": "sims", **where, "omega": float(o), "model": str(pair.positive), "guidance": pair.guidance(o)} for o in omegas]
            rows += [{"method": "weight_space", **where, "weight": w, "model": str(p), "guidance": None} for w, p in sorted(pair.weight_space.items())]
    return rows


def markdown(best: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """The best row of each method as a Markdown table."""
    lines = ["| method | iteration | budget (images) | EMA std | omega / w' | " + " | ".join(metrics) + " |",
             "|---" * (5 + len(metrics)) + "|"]
    for method, row in best.items():
        knob = row.get("omega") if method == "sims" else row.get("weight")
        cells = [method, row.get("iteration"), row.get("budget_nimg"), row.get("ema_std"), knob, *(f"{row[m]:.4g}" for m in metrics)]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*SETTING_KEYS, *metrics, "model", "negative"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every setting; returns ``{"select", "best": {method: row}, "rows"}``."""
    summary_path = Path(cfg.sims_dir) / SUMMARY_NAME
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{summary_path}: cannot read the SIMS summary ({err}); run autoguide-sims out_dir={cfg.sims_dir} first") from err
    iterations = None if cfg.iterations is None else [int(k) for k in cfg.iterations]
    todo = settings(summary, [float(o) for o in cfg.omega], iterations)
    device = resolve_device(str(cfg.device), rank_from_env())
    metrics_cfg = OmegaConf.to_container(cfg.metrics, resolve=True)
    metrics, select = metric_names(metrics_cfg), str(cfg.select)
    if select not in metrics:
        raise ValueError(f"select={select!r} is not measured here; the metrics are {metrics}")
    check_model(ModelLoader(device)(summary["base"]), metrics_cfg)  # every row has the base's architecture
    evaluator = Evaluator(metrics_cfg, OmegaConf.to_container(cfg.extractors, resolve=True), device)
    out = Path(cfg.output.dir)
    write_text_atomic(out / "compare.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    rows = []
    for setting in todo:
        load = ModelLoader(device)  # per row: only this row's models stay in memory
        net = load(setting["model"])
        terms = build_guidance(setting["guidance"], load)
        result = evaluate_model(net, terms, cfg, evaluator, device)["metrics"]
        negative = setting["guidance"]["model"] if setting["guidance"] else None
        rows.append({**{k: setting.get(k) for k in SETTING_KEYS}, **result, "model": setting["model"], "negative": negative})
        log.info("%s", {k: rows[-1][k] for k in [*SETTING_KEYS, select] if rows[-1][k] is not None})
        write_csv(out / "compare.csv", rows, metrics)
    best = {m: dict(best_row([r for r in rows if r["method"] == m], select)) for m in METHODS if any(r["method"] == m for r in rows)}
    report = {"select": select, "best": best, "rows": rows, "feature_networks": evaluator.info()}
    write_text_atomic(out / "compare.json", json_text(report))
    write_text_atomic(out / "compare.md", markdown(best, metrics))
    print(markdown(best, metrics))
    return report


def search_path_override() -> str:
    """Puts ``conf/eval`` and ``conf/generate`` on Hydra's search path (``defaults: [evaluate]``)."""
    return f"hydra.searchpath=[file://{config_dir() / 'eval'},file://{config_dir() / 'generate'}]"


def main() -> None:
    """Entry point of ``python -m autoguide.sims.compare``."""
    import hydra

    sys.argv.insert(1, search_path_override())
    hydra.main(config_path=str(config_dir() / "sims"), config_name="compare", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
