"""``autoguide-sims``: the SIMS loop as a Hydra app (config root ``conf/sims/``).

    autoguide-sims out_dir=runs/sims base_run=runs/mnist-s budget_mi=[0.01,0.02]

Re-running the same command resumes at the first incomplete stage. A stage folder that was
started with other inputs is refused with one line naming the changed keys (exit status 2).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from autoguide.config_dir import config_dir
from autoguide.sims.pipeline import run_sims
from autoguide.sims.records import SpecConflict

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    """Run the stages ``cfg`` asks for and log where the pairs are."""
    try:
        summary = run_sims(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except SpecConflict as error:
        print(f"autoguide-sims: error: {error}", file=sys.stderr)
        sys.exit(2)
    if summary is not None:
        for entry in summary["iterations"]:
            for pair in entry["pairs"]:
                log.info("iteration %d: %s", entry["iteration"], pair)


def main() -> None:
    """Console entry point ``autoguide-sims``."""
    hydra.main(config_path=str(config_dir() / "sims"), config_name="sims", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
