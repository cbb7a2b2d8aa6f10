"""``autoguide-sims-compare``: unguided base vs SIMS-guided (every omega) vs weight-space
SIMS of a SIMS folder, measured like ``autoguide-eval`` (``conf/sims_compare.yaml``;
``autoguide.sims.compare``).

    autoguide-sims-compare sims_dir=runs/sims-mnist 'omega=[0.25,0.5,1,2]' metrics=mnist seeds=0-4999

Writes ``compare.csv``, ``compare.json``, ``compare.md`` and ``compare.yaml`` into
``output.dir``; prints the Markdown table of each method's best row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoguide.apps.common import evaluation, plain
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.io import write_text_atomic
from autoguide.runtime.process import resolve_device
from autoguide.sims.compare import markdown, run_compare


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every setting; returns ``{"select", "best": {method: row}, "rows"}``."""
    out = Path(cfg.output.dir)
    measure = evaluation(cfg, resolve_device(str(cfg.device)))
    iterations = None if cfg.iterations is None else [int(k) for k in cfg.iterations]
    write_text_atomic(out / "compare.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    report = run_compare(
        Path(cfg.sims_dir), [float(o) for o in plain(cfg.omega)], iterations, str(cfg.select), measure, out
    )
    print(markdown(report["best"], measure.metric_names()))
    return report


def main() -> None:
    """Console entry point ``autoguide-sims-compare``."""
    run_hydra_app(
        "sims_compare",
        run,
        errors={ValueError: "autoguide-sims-compare: error", FileNotFoundError: "autoguide-sims-compare: error"},
    )


if __name__ == "__main__":
    main()
