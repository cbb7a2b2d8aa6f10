"""``autoguide-train`` / ``python train.py``: train one model as ``conf/train.yaml`` and the
command line say (``autoguide.train.run.train``).

Usage: ``autoguide-train [experiment=<name>] [key=value ...]``, or ``autoguide-train
--resolved-config <file>`` for a config that was composed and checked elsewhere (SIMS's
fine-tunes, ``autoguide.sims.retrain``). A config error (an unknown
group option such as ``net=nope``, a bad value, a network that does not fit the data) prints
one line naming the key and exits with status 2.

In a Hydra multirun (``-m``) every sweep point trains in its own folder,
``<run_dir>/<its overrides>`` (e.g. ``runs/toy2d-main/seed=1``), unless the command line sets
``run_dir``; a requeued or re-run point has the same overrides and so finds its checkpoints.
Only rank 0 writes Hydra's config copies (``logs/hydra/``, once the run's checks passed) and
``logs/train.log`` into the run folder, and only after it claimed the folder
(``autoguide.runtime.claim``): a second process on the same run folder is refused, before it writes
anything, with one line naming the holder (exit status 2).

Exit status: 0 finished; 2 refused (a config error, a busy run folder, a changed rerun);
3 stopped by SIGTERM or a preemption signal after saving a checkpoint (rerun to continue);
4 stopped because the loss, gradients or weights went non-finite (``autoguide.train.finite``).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

from autoguide.apps.hydra_app import FILE_ERRORS, call_reporting, exit_with, run_hydra_app
from autoguide.core.typed_settings import ConfigError
from autoguide.runtime.claim import FolderBusy, claim_folder
from autoguide.runtime.process import rank_from_env
from autoguide.train.finite import NonFiniteTraining
from autoguide.train.logfile import FolderFileHandler
from autoguide.train.validate import check_run_dir

if TYPE_CHECKING:
    from autoguide.train.run_config import HydraRecord

MAX_FOLDER_NAME = 200  # bytes; file systems allow 255
EXIT_NONFINITE = 4
NON_ZERO_RANK_OVERRIDES = (
    "hydra.output_subdir=null",
    "~hydra.job_logging.handlers.file",
    "hydra.job_logging.root.handlers=[console]",
)
"""Keep Hydra from writing into the run folder on ranks > 0: its config copies and the log file."""
RESOLVED_CONFIG_FLAG = "--resolved-config"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
"""Hydra's default job log format."""
ERRORS: dict[type[Exception], str | tuple[str, int]] = {
    ConfigError: "config error",
    FolderBusy: "autoguide-train: error",
    NonFiniteTraining: ("autoguide-train: stopped", EXIT_NONFINITE),
}
"""How the app reports each refusal: the prefix of its one line on stderr (and exit status)."""


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


def hydra_record() -> HydraRecord | None:
    """Inside a Hydra app: Hydra's own node for the run's ``logs/hydra`` record (None outside one)."""
    from hydra.core.hydra_config import HydraConfig

    from autoguide.train.run_config import HydraRecord

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    node = OmegaConf.to_container(hydra_cfg, resolve=False)
    assert isinstance(node, dict)  # Hydra's node is a mapping
    overrides = tuple(str(o) for o in hydra_cfg.overrides.task)
    return HydraRecord(Path(hydra_cfg.runtime.output_dir), {str(k): v for k, v in node.items()}, overrides)


def task(cfg: DictConfig) -> Path:
    """Train one run (one multirun point) as ``cfg`` says: the composed config becomes the typed
    ``TrainRunConfig`` here, once (``read_train_config``), and the library takes only that.
    The library is imported here, not at the top: the app module loads without Lightning."""
    from autoguide.train.run import train
    from autoguide.train.run_config import read_train_config

    _log_once()
    separate_sweep_points(cfg)
    return train(read_train_config(cfg, hydra_record()))


def claim_hydra_output(cfg: DictConfig) -> None:
    """Claim the folder Hydra is about to write (``hydra.run.dir``, the run folder) before it
    writes its log there (``cfg``: the command line's composition with Hydra's node); a run
    folder that is a file is a ``ConfigError``. A multirun's points claim theirs in ``train``."""
    check_run_dir(cfg.hydra.run.dir)
    claim_folder(Path(cfg.hydra.run.dir))  # held until the process exits


def log_like_hydra(run_dir: Path) -> None:
    """Without Hydra: the console log, and on rank 0 ``<run_dir>/logs/train.log``
    (``FolderFileHandler``, as ``conf/hydra/default.yaml`` sets it up for a Hydra run)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank_from_env().rank == 0:
        handlers.append(FolderFileHandler(str(run_dir / "logs" / "train.log")))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)


def train_resolved(config_file: Path) -> None:
    """Train from a resolved, checked config file (a SIMS fine-tune, ``autoguide.sims.retrain``):
    no composition and no Hydra job; the same checks, claim and exit statuses. The log goes to
    the run folder once the config passed its checks."""
    from autoguide.train.run import train
    from autoguide.train.run_config import read_train_config

    cfg = OmegaConf.load(config_file)
    if not isinstance(cfg, DictConfig):
        exit_with(ConfigError(f"{config_file}: expected a mapping (a resolved training config)"), "config error")
        return

    def train_logged(resolved: DictConfig) -> Path:
        job = read_train_config(resolved)
        log_like_hydra(job.run_dir)
        _log_once()
        return train(job)

    call_reporting(train_logged, cfg, {**dict.fromkeys(FILE_ERRORS, "autoguide-train: error"), **ERRORS})


def main() -> None:
    """Console entry point ``autoguide-train``; ``autoguide-train --resolved-config <file>``
    trains from a resolved config file (``train_resolved``)."""
    if len(sys.argv) == 3 and sys.argv[1] == RESOLVED_CONFIG_FLAG:
        train_resolved(Path(sys.argv[2]))
        return
    if rank_from_env().rank > 0:
        sys.argv += NON_ZERO_RANK_OVERRIDES
    run_hydra_app("train", task, errors=ERRORS, before_start=claim_hydra_output if rank_from_env().rank == 0 else None)


if __name__ == "__main__":
    main()
