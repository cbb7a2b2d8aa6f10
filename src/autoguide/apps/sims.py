"""``autoguide-sims``: the SIMS loop (``conf/sims.yaml``; ``autoguide.sims.pipeline``).

    autoguide-sims out_dir=runs/sims base_run=runs/mnist-s 'budget_mi=[0.01,0.02]'

Re-running the same command resumes at the first incomplete stage. A stage folder that was
started with other inputs is refused with one line naming the changed keys (exit status 2).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from autoguide.apps.config_tree import compose
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.core.typed_settings import ConfigError, from_mapping
from autoguide.runtime.claim import FolderBusy
from autoguide.sims.pipeline import run_sims
from autoguide.sims.records import SpecConflict
from autoguide.sims.sims_settings import SimsSettings

log = logging.getLogger(__name__)


def sims_settings(cfg: DictConfig) -> SimsSettings:
    """The composed ``sims`` config as typed settings (``ConfigError`` naming the key)."""
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(values, dict)  # the primary config is a mapping
    return from_mapping(SimsSettings, {str(k): v for k, v in values.items()}, "sims")


def run(cfg: DictConfig) -> None:
    """Run the stages ``cfg`` asks for and log where the pairs are."""
    summary = run_sims(sims_settings(cfg), lambda overrides: compose("train", overrides))
    if summary is not None:
        for entry in summary["iterations"]:
            for pair in entry["pairs"]:
                log.info("iteration %d: %s", entry["iteration"], pair)


def main() -> None:
    """Console entry point ``autoguide-sims``."""
    run_hydra_app(
        "sims",
        run,
        errors={
            SpecConflict: "autoguide-sims: error",
            ConfigError: "autoguide-sims: error",
            FolderBusy: "autoguide-sims: error",
        },
    )


if __name__ == "__main__":
    main()
