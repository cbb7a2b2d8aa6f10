"""One training job from its typed config (``autoguide.train.run_config.TrainRunConfig``): run
folder, data, model, Trainer, fit, final model.

Run folder ``run_dir``: ``config.yaml`` (the resolved config), ``checkpoints/``, ``phema/``
(post-hoc EMA snapshots), ``samples/``, ``logs/`` (with ``logs/hydra/``: Hydra's record of the
config and the command-line overrides) and, at the end, ``final.safetensors`` (the raw weights
as a model file). ``resume``: ``auto`` continues from the newest checkpoint in the run folder
(so re-running the same command continues the run), ``never`` refuses a run folder that already
has checkpoints, anything else is a checkpoint path. A run that continues a checkpoint must have
the configuration recorded in the folder, up to the keys of ``autoguide.train.rerun``
(``resume_changed=true`` accepts any change). Every check runs before the first write to the
run folder, so a refused run leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from autoguide.core.typed_settings import ConfigError
from autoguide.data.datamodule import DataSettings, DiffusionDataModule, dataset_info, training_dataset
from autoguide.data.registry import TrainingSet
from autoguide.data.vae import write_run_latent
from autoguide.diffusion.loss import ExactTarget
from autoguide.io import save_model, write_text_atomic
from autoguide.runtime.claim import claim_folder
from autoguide.runtime.preemption import EXIT_PREEMPTED
from autoguide.runtime.process import rank_from_env
from autoguide.train.checkpoint import AtomicCheckpointIO, ImageCheckpoint, list_checkpoints, newest_intact_checkpoint
from autoguide.train.finite import NonFiniteTraining
from autoguide.train.module import DiffusionModule
from autoguide.train.plan import BatchPlan
from autoguide.train.recipe import RunSettings, TrainSettings
from autoguide.train.rerun import check_unchanged
from autoguide.train.run_config import TrainRunConfig
from autoguide.train.validate import check_accelerator, check_against_data, check_against_main, exact_target

log = logging.getLogger(__name__)

FINAL_MODEL = "final.safetensors"
RUN_SUBDIRS = ("checkpoints", "phema", "samples", "logs")


def resume_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, or ``None`` for a fresh start."""
    existing = list_checkpoints(run_dir)
    if resume in (None, "never"):
        if existing:
            raise ConfigError(
                f"resume={resume}: run_dir {run_dir} already has checkpoints (newest {existing[-1][1].name}); "
                "use resume=auto to continue it or choose another run_dir"
            )
        return None
    if resume == "auto":
        return newest_intact_checkpoint(run_dir)
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ConfigError(f"resume={resume}: not a checkpoint (expected a .ckpt written by autoguide training)")
    return path


def _instantiate_all(group: Mapping[str, Any] | None, where: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of the config group ``where`` (callbacks); a value
    the class refuses is a ``ConfigError`` naming ``<where>.<entry>``."""
    found = []
    for name, conf in (group or {}).items():
        if not conf or "_target_" not in conf:
            continue
        try:
            found.append(hydra.utils.instantiate(conf))
        except InstantiationException as error:
            cause = error.__cause__ or error
            if isinstance(cause, ConfigError):
                raise cause from None
            raise ConfigError(f"{where}.{name}: {' '.join(str(cause).split())}") from None
    return found


@dataclass(frozen=True)
class TrainingData:
    """The run's data, checked: its settings, the dataset and the loss's regression target."""

    settings: DataSettings
    dataset: TrainingSet
    exact_target: ExactTarget | None


def check_data(settings: RunSettings, data: DataSettings, main_file: str | None = None) -> TrainingData:
    """The dataset of ``data``, checked against the network, the loss target and the main model
    a guide is trained for (``main_file``)."""
    name = str(data.dataset.get("name", "?"))
    try:
        dataset = training_dataset(data)
        info = dataset_info(dataset, data)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        raise ConfigError(f"data: {error}") from None
    check_against_data(settings.net, name, info)
    if main_file is not None:
        check_against_main(main_file, name, info, getattr(dataset, "latent_spec", None))
    return TrainingData(data, dataset, exact_target(settings.train, dataset, name))


WANDB_RUN_ID_FILE = "logs/wandb_run_id"


def wandb_run_id(run_dir: str | os.PathLike) -> str:
    """The wandb run id of a run folder, kept in ``<run>/logs/wandb_run_id`` (created at the
    first start), so every (re)start of the run logs to the same wandb run."""
    path = Path(run_dir) / WANDB_RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:8]
    write_text_atomic(path, run_id + "\n")
    return run_id


def build_loggers(job: TrainRunConfig) -> list[Any]:
    """The loggers of ``job.logger``; a wandb logger resumes the run folder's wandb run (rank 0)."""
    loggers = []
    for conf in job.logger.values():
        if not conf or "_target_" not in conf:
            continue
        extra: dict[str, Any] = {}
        if issubclass(hydra.utils.get_class(conf["_target_"]), WandbLogger):
            extra = {"id": wandb_run_id(job.run_dir) if rank_from_env().rank == 0 else None, "resume": "allow"}
        loggers.append(hydra.utils.instantiate(conf, **extra))
    return loggers


def build_trainer(job: TrainRunConfig) -> L.Trainer:
    """A Trainer for the run's optimizer steps with the configured callbacks and loggers."""
    if any(conf and conf.get("offline", False) for conf in job.logger.values()):
        os.environ["WANDB_MODE"] = "offline"
    check_accelerator(job.trainer)
    callbacks = _instantiate_all(job.callbacks, "callbacks")
    loggers = build_loggers(job)
    # Signals are handled by ImageCheckpoint (autoguide.runtime.preemption), not by Lightning's
    # SLURM plugin, which would save a mid-step hpc_ckpt from inside its handler.
    slurm = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    try:
        return _trainer(job, callbacks, loggers, slurm)
    except MisconfigurationException as error:  # a trainer setting Lightning refuses, as one line
        raise ConfigError(f"trainer: {' '.join(str(error).split())}") from None


def _trainer(job: TrainRunConfig, callbacks: list[Any], loggers: list[Any], slurm: list[Any]) -> L.Trainer:
    train = job.settings.train
    return L.Trainer(
        **job.trainer,
        max_steps=train.total_steps,
        max_epochs=-1,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=job.run_dir,
        plugins=[AtomicCheckpointIO(), *slurm],
        log_every_n_steps=max(1, round(train.interval_images("log_kimg") / train.batch_size)),
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )


HYDRA_RECORD_DIR = "logs/hydra"


@rank_zero_only
def _prepare_run_dir(job: TrainRunConfig, latent: dict[str, Any] | None = None) -> None:
    """The run folder's subfolders and records: ``config.yaml`` (the resolved config) and Hydra's."""
    run_dir = job.run_dir
    for sub in RUN_SUBDIRS:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(job.resolved))
    _write_hydra_record(job)
    if latent is not None:  # the latent space of the run's models, for their cards (latent.json)
        write_run_latent(run_dir, latent)


def _write_hydra_record(job: TrainRunConfig) -> None:
    """Inside a Hydra app (``job.hydra`` set): what Hydra itself would write into ``logs/hydra``
    of its output folder (the run folder; a multirun point's own folder) -- the task's config as
    composed (``job.composed``, interpolations kept), Hydra's config, the command-line overrides
    -- written here, after every check passed, instead of by Hydra before the task starts
    (``hydra.output_subdir: null``); this also creates the folder of the job's log file
    (``autoguide.train.logfile``)."""
    if job.hydra is None:
        return
    folder = job.hydra.output_dir / HYDRA_RECORD_DIR
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(job.composed))
    write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml({"hydra": job.hydra.config}))
    write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(list(job.hydra.overrides)))


def train(job: TrainRunConfig) -> Path:
    """Train as ``job`` says (continuing a previous run per ``job.resume``); returns the path of
    the final model file. ``ConfigError`` (one line naming the key) for data that does not fit
    the config (the config's own checks ran in ``read_train_config``)."""
    data = check_data(job.settings, job.data, job.main_model)
    with claim_run_dir(job.run_dir):
        return _train(job, data)


def claim_run_dir(run_dir: Path) -> contextlib.AbstractContextManager:
    """The run folder's claim (``autoguide.runtime.claim``) on rank 0, before anything is written; other
    ranks of a distributed run write nothing there and take none."""
    return claim_folder(run_dir) if rank_from_env().rank == 0 else contextlib.nullcontext()


def _fit(
    trainer: L.Trainer, module: DiffusionModule, datamodule: DiffusionDataModule, ckpt: Path | None, run_dir: Path
) -> None:
    """``trainer.fit``; a run stopped for non-finite values names the newest checkpoint (all
    written checkpoints are finite); a SIGTERM that Lightning acted on before the checkpoint
    callback could is an interruption (exit status 3), not a finished run."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    except NonFiniteTraining as error:
        existing = list_checkpoints(run_dir)
        last = "no checkpoint was written"
        if existing:
            last = f"the last checkpoint, at nimg {existing[-1][0]}: {existing[-1][1]}"
        raise NonFiniteTraining(f"{error}; {last}", error.nimg) from None
    except SIGTERMException:
        log.warning("SIGTERM before training started: stopped without a new checkpoint; rerun to continue")
        raise SystemExit(EXIT_PREEMPTED) from None
    finally:  # Lightning's signal teardown after an exception reinstates the flags' handlers
        for callback in getattr(trainer, "callbacks", []):
            if isinstance(callback, ImageCheckpoint):
                callback.flag.restore()


def describe_plan(train: TrainSettings, plan: BatchPlan) -> str:
    """The run's length and batch split in words, e.g. ``4096 images = 128 steps of 32 (2
    device(s) x micro-batch 8 x 2 accumulation)``."""
    return (
        f"{train.total_nimg} images = {train.total_steps} steps of {plan.batch_size} "
        f"({plan.world_size} device(s) x micro-batch {plan.micro_batch} x {plan.accumulate} accumulation)"
    )


def _train(job: TrainRunConfig, data: TrainingData) -> Path:
    """The run itself, once the run folder is claimed."""
    settings, run_dir = job.settings, job.run_dir
    ckpt = resume_checkpoint(job.resume, run_dir)
    if ckpt is not None:
        check_unchanged(job)
    latent = getattr(data.dataset, "latent_spec", None)
    trainer = build_trainer(job)
    plan = settings.train.batch_plan(trainer.world_size)
    trainer.accumulate_grad_batches = plan.accumulate
    datamodule = DiffusionDataModule(data.settings, plan.micro_batch, dataset=data.dataset)
    module = DiffusionModule(settings, data.exact_target)
    _prepare_run_dir(job, latent)
    if trainer.is_global_zero:
        log.info(
            "run %s: %s%s", run_dir, describe_plan(settings.train, plan), f", resuming from {ckpt}" if ckpt else ""
        )
    _fit(trainer, module, datamodule, ckpt, run_dir)
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()

    final = run_dir / FINAL_MODEL
    if trainer.is_global_zero:
        card = {
            "network": module.net.config,
            "nimg": module.nimg,
            "ema_std": None,
            "source": f"training run {run_dir}: raw weights after {module.nimg} images",
            **({"latent": latent} if latent is not None else {}),
        }
        save_model(final, module.net, card)
        log.info("final model: %s (nimg %d)", final, module.nimg)
    return final
