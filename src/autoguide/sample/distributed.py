"""Splitting generation over processes by seed ranges, without any communication.

The rank comes from the launcher's environment: torchrun (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) or SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``). Each rank
takes one contiguous slice of the image list and writes its own files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_KEYS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))


@dataclass(frozen=True)
class RankInfo:
    """This process's ``rank`` among ``world_size`` and its GPU index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def suffix(self) -> str:
        """File-name suffix for per-rank outputs: ``""`` alone, ``-rank003`` with several ranks."""
        return "" if self.world_size == 1 else f"-rank{self.rank:03d}"


def rank_from_env(env: Mapping[str, str] = os.environ) -> RankInfo:
    """The rank from torchrun's or SLURM's variables (torchrun first); a single process otherwise."""
    for rank_key, world_key, local_key in ENV_KEYS:
        if rank_key in env and world_key in env:
            try:
                info = RankInfo(int(env[rank_key]), int(env[world_key]), int(env.get(local_key, 0)))
            except ValueError:
                raise ValueError(f"{rank_key}={env[rank_key]!r}, {world_key}={env[world_key]!r}: expected integers") from None
            if not 0 <= info.rank < info.world_size:
                raise ValueError(f"{rank_key}={info.rank} is outside [0, {world_key}={info.world_size})")
            return info
    return RankInfo()


def rank_slice(n: int, info: RankInfo) -> slice:
    """Contiguous share of ``n`` items for ``info.rank``; shares differ in size by at most one."""
    return slice(n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size)
