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

from autoguide.apps.common import evaluation
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.apps.sampling_configs import SimsCompareConfig, read_config
from autoguide.io import write_text_atomic
from autoguide.runtime.process import resolve_device
from autoguide.sims.compare import markdown, run_compare


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every setting of ``cfg`` (``conf/sims_compare.yaml``); returns
    ``{"select", "best": {method: row}, "rows"}``."""
    settings = read_config(SimsCompareConfig, cfg)
    out = Path(settings.output.dir)
    measure = evaluation(settings, resolve_device(settings.device))
    write_text_atomic(out / "compare.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    report = run_compare(
        Path(settings.sims_dir), list(settings.omega), settings.iterations, settings.select, measure, out
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
