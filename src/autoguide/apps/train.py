"""``autoguide-train`` / ``python train.py``: train one model as ``conf/train.yaml`` and the
command line say (``autoguide.train.run.train``).

Usage: ``autoguide-train [experiment=<name>] [key=value ...]``. A config error (an unknown
group option such as ``net=nope``, a bad value, a network that does not fit the data) prints
one line naming the key and exits with status 2.

In a Hydra multirun (``-m``) every sweep point trains in its own folder,
``<run_dir>/<its overrides>`` (e.g. ``runs/toy2d-main/seed=1``), unless the command line sets
``run_dir``; a requeued or re-run point has the same overrides and so finds its checkpoints.
Only rank 0 lets Hydra write its config copies and ``logs/train.log`` into the run folder,
and only after it claimed the folder (``autoguide.claim``): a second process on the same run
folder is refused, before it writes anything, with one line naming the holder (exit status 2).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

from autoguide.apps.hydra_app import exit_with, run_hydra_app
from autoguide.claim import FolderBusy, claim_folder
from autoguide.config import compose
from autoguide.runtime import rank_from_env
from autoguide.settings import ConfigError

MAX_FOLDER_NAME = 200  # bytes; file systems allow 255
NON_ZERO_RANK_OVERRIDES = ("hydra.output_subdir=null", "~hydra.job_logging.handlers.file",
                           "hydra.job_logging.root.handlers=[console]")
"""Keep Hydra from writing into the run folder on ranks > 0: its config copies and the log file."""


def _log_once() -> None:
    """``import lightning`` gives the ``lightning`` logger a console handler of its own; with
    Hydra's root handlers (console and ``logs/train.log``) every line would print twice."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


def sweep_point_folder(task_overrides: Sequence[str]) -> str:
    """The folder name of one multirun point: its overrides except ``paths.*`` (which place the
    folder) joined by commas, with ``/`` replaced, e.g. ``seed=1,train.lr_ref=0.005``;
    ``default`` when nothing is left. A name longer than ``MAX_FOLDER_NAME`` bytes keeps its
    start and ends in a hash of the whole, so it stays unique and the same on every rerun."""
    kept = [o for o in task_overrides if not o.lstrip("+~").startswith("paths.")]
    name = ",".join(sorted(kept)).replace("/", "_") or "default"
    if len(name.encode()) <= MAX_FOLDER_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return name.encode()[: MAX_FOLDER_NAME - 17].decode(errors="ignore") + "-" + digest


def separate_sweep_points(cfg: DictConfig) -> None:
    """In a multirun without a ``run_dir`` override, give this point ``<run_dir>/<overrides>``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN or any(o.lstrip("+~").split("=")[0] == "run_dir" for o in overrides):
        return
    with open_dict(cfg):
        cfg.run_dir = str(Path(cfg.run_dir) / sweep_point_folder(overrides))


def task(cfg: DictConfig) -> Path:
    """Train one run (one multirun point) as ``cfg`` says."""
    from autoguide.train.run import train

    _log_once()
    separate_sweep_points(cfg)
    return train(cfg)


NO_JOB_FLAGS = ("-m", "--multirun", "-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")
"""Command-line flags after which Hydra writes no run folder (a multirun's points claim theirs in ``train``)."""


def claim_hydra_output(args: Sequence[str]) -> None:
    """Claim the folder Hydra is about to write (``hydra.run.dir``, the run folder) before it
    writes its config copies and log there. A command line that does not compose is left for
    Hydra to report."""
    if any(arg.split("=")[0] in NO_JOB_FLAGS for arg in args):
        return
    try:
        cfg = compose("train", [a for a in args if not a.startswith("-")], return_hydra_config=True)
        folder = Path(cfg.hydra.run.dir)
    except Exception:  # noqa: BLE001 - Hydra itself reports a command line that does not compose
        return
    claim_folder(folder)  # held until the process exits


def main() -> None:
    """Console entry point ``autoguide-train``."""
    if rank_from_env().rank > 0:
        sys.argv += NON_ZERO_RANK_OVERRIDES
    else:
        try:
            claim_hydra_output(sys.argv[1:])
        except FolderBusy as error:
            exit_with(error, "autoguide-train: error")
    run_hydra_app("train", task, errors={ConfigError: "config error", FolderBusy: "autoguide-train: error"})


if __name__ == "__main__":
    main()
