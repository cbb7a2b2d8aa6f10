"""``autoguide-train`` / ``python train.py``: the Hydra entry point of training.

Usage: ``autoguide-train [experiment=<name>] [key=value ...]``; see ``conf/config.yaml``.
A config error (an unknown group option such as ``net=nope``, a bad value, a network that
does not fit the data) prints one line naming the key and exits with status 2.

In a Hydra multirun (``-m``) every sweep point trains in its own folder,
``<run_dir>/<its overrides>`` (e.g. ``runs/toy2d-main/seed=1``), unless the command line sets
``run_dir``; a requeued or re-run point has the same overrides and so finds its checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from autoguide.config_dir import config_dir
from autoguide.train.plan import ConfigError


def check_group_choices(args: Sequence[str], conf: Path) -> None:
    """Every ``group=option`` override names an existing ``conf/<group>/<option>.yaml``
    (Hydra's own message for a missing option is a multi-line listing)."""
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key.startswith(("~", "hydra")) or "." in key or not (conf / key).is_dir():
            continue
        options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
        for option in value.split(","):
            if option not in options and option != "null":
                raise ConfigError(f"{key}={option}: no such option in {conf / key}; choose one of {', '.join(options)}")


def _log_once() -> None:
    """``import lightning`` gives the ``lightning`` logger a console handler of its own; with
    Hydra's root handlers (console and ``logs/train.log``) every line would print twice.
    (Ranks > 0 get no file handler at all: ``NON_ZERO_RANK_OVERRIDES``.)"""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


MAX_FOLDER_NAME = 200  # bytes; file systems allow 255


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


def run_task(cfg: DictConfig) -> None:
    """Train per ``cfg``; a ``ConfigError`` becomes one line on stderr and exit status 2."""
    from autoguide.train.run import train

    _log_once()
    separate_sweep_points(cfg)
    try:
        train(cfg)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)


# Keep Hydra from writing into the run folder: its config copies and the log file.
NON_ZERO_RANK_OVERRIDES = ("hydra.output_subdir=null", "~hydra.job_logging.handlers.file",
                           "hydra.job_logging.root.handlers=[console]")


def launch_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's global rank as its launcher tells it before any process group exists:
    torchrun ``RANK``, srun ``SLURM_PROCID`` (inside a job step), Lightning's DDP launcher
    ``LOCAL_RANK`` (one node); 0 otherwise."""
    if "RANK" in env:
        return int(env["RANK"])
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return int(env.get("LOCAL_RANK", 0))


def main() -> None:
    """Parse the command line with Hydra (config tree from ``autoguide.config_dir``) and train.
    Only rank 0 lets Hydra write its config copies and ``logs/train.log``."""
    conf = config_dir()
    if launch_rank() > 0:
        sys.argv += NON_ZERO_RANK_OVERRIDES
    try:
        check_group_choices(sys.argv[1:], conf)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    hydra.main(config_path=str(conf), config_name="config", version_base="1.3")(run_task)()
