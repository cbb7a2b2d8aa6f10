"""Where this process runs: its rank among the launched processes, its device, and the model
files it loads. One rule for every app (training, generation, evaluation, SIMS).

The rank comes from the launcher's environment, before any process group exists:
- torchrun (and Lightning's multi-node launch): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``;
- ``srun`` inside a SLURM job step (``SLURM_STEP_ID`` is set): ``SLURM_PROCID``,
  ``SLURM_NTASKS``, ``SLURM_LOCALID`` (a batch script itself is not a step: there one process
  runs, whatever ``--ntasks`` says);
- Lightning's one-node DDP launcher, which starts ranks 1.. with only ``LOCAL_RANK`` and
  ``WORLD_SIZE`` set: the local rank is the rank;
- otherwise a single process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoguide.io import load_denoiser


@dataclass(frozen=True)
class RankInfo:
    """This process's ``rank`` among ``world_size`` and its device index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def suffix(self) -> str:
        """File-name suffix for per-rank outputs: ``""`` alone, ``-rank003`` with several ranks."""
        return "" if self.world_size == 1 else f"-rank{self.rank:03d}"


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(env.get(key, default))
    except ValueError:
        raise ValueError(f"{key}={env[key]!r}: expected an integer") from None


def rank_from_env(env: Mapping[str, str] = os.environ) -> RankInfo:
    """The rank by the rule of the module docstring; ``ValueError`` naming the variable for
    a value that is not an integer or a rank outside its world."""
    if "RANK" in env:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        keys = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    elif "LOCAL_RANK" in env:
        keys = ("LOCAL_RANK", "WORLD_SIZE", "LOCAL_RANK")
    else:
        return RankInfo()
    rank_key, world_key, local_key = keys
    info = RankInfo(_int(env, rank_key, 0), _int(env, world_key, 1), _int(env, local_key, 0))
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"{rank_key}={info.rank} is outside [0, {world_key}={info.world_size})")
    return info


def slurm_job_key(env: Mapping[str, str] = os.environ) -> str | None:
    """The job ``scontrol`` takes: ``<array job>_<task>`` inside an array, else the job id;
    ``None`` outside SLURM."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def rank_slice(n: int, info: RankInfo) -> slice:
    """Contiguous share of ``n`` items for ``info.rank``; shares differ in size by at most one."""
    return slice(n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size)


def resolve_device(name: str, info: RankInfo | None = None) -> torch.device:
    """``auto``: this rank's GPU (``cuda:LOCAL_RANK``) if CUDA is available, else the CPU;
    anything else is a torch device name."""
    if name == "auto":
        info = info or rank_from_env()
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelLoader:
    """Loads each model file once onto ``device`` (equal paths give the same module) and keeps
    the cards of what it loaded."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.models: dict[str, nn.Module] = {}

    def __call__(self, path: str) -> nn.Module:
        if path not in self.models:
            self.models[path] = load_denoiser(path, self.device)
        return self.models[path]

    def cards(self) -> dict[str, Any]:
        return {path: getattr(model, "card", None) for path, model in self.models.items()}


def code_revision() -> str:
    """The package version, and the git commit of its source checkout when it runs from one
    (``+changes`` when tracked files differ from it): ``0.1.0 (git 1a2b3c...)``."""
    import subprocess

    import autoguide

    folder = Path(autoguide.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return autoguide.__version__
    if head.returncode != 0:  # an installed wheel: no checkout
        return autoguide.__version__
    return f"{autoguide.__version__} (git {head.stdout.strip()}{'+changes' if dirty.stdout.strip() else ''})"


def wait_for_ranks(info: RankInfo) -> None:
    """Block until every torchrun rank of ``info`` got here (a gloo barrier; nothing with one process)."""
    if info.world_size == 1:
        return
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():  # ranks may wait long for others (a resumed rank has less left to do)
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size, timeout=datetime.timedelta(days=2))
    dist.barrier()
