"""A rerun continues its run only with the same settings.

Re-running a training command continues the run from its newest checkpoint (``resume=auto``).
A rerun whose resolved config differs from the ``config.yaml`` recorded in the run folder would
silently mix two trajectories (and overwrite the record that SIMS and the reports read), so it
is refused with one line naming every changed key, unless each changed key is in
``RESUMABLE_KEYS`` (settings that do not change what is trained: where files and logs go,
intervals of logs, checkpoints and sample grids, the duration, how the global batch is spread
over devices) or the command says ``resume_changed=true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from autoguide.core.typed_settings import ConfigError
from autoguide.train.run_config import TrainRunConfig

CONFIG_FILE = "config.yaml"
RESUMABLE_KEYS = (
    "run_dir",
    "paths",
    "resume",
    "resume_changed",
    "logger",
    "vae_path",
    "train.duration_mi",
    "train.duration_fraction",
    "train.log_kimg",
    "train.checkpoint_kimg",
    "train.sample_kimg",
    "train.micro_batch",
    "train.compile",
    "train.max_nonfinite_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "callbacks.checkpoint",
    "callbacks.sample_grid",
    "callbacks.progress_bar",
    "callbacks.phema.out_dir",
)
"""Keys (and key prefixes: ``logger`` covers ``logger.*``) a rerun may change and still continue."""


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists are leaves; an empty mapping is a leaf."""
    if isinstance(node, Mapping) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


def resumable(key: str) -> bool:
    """Whether ``key`` is one of ``RESUMABLE_KEYS`` or lies under one."""
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def changed_keys(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two plain configs (present in one only included)."""
    old, new = flatten(recorded), flatten(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k, KeyError) != new.get(k, KeyError))


def check_unchanged(job: TrainRunConfig) -> None:
    """Refuse (``ConfigError``, one line naming each changed key with its recorded and new
    value) a run that continues ``job.run_dir`` with settings (``job.resolved``) other than
    those in its ``config.yaml``, except the ``RESUMABLE_KEYS`` or with ``resume_changed=true``.
    A folder without ``config.yaml`` has nothing to compare."""
    run_dir = job.run_dir
    path = run_dir / CONFIG_FILE
    if not path.is_file() or job.resume_changed:
        return
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:
        raise ConfigError(
            f"{path}: unreadable run config ({' '.join(str(error).split())}); fix or remove it, or use another run_dir"
        ) from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(recorded).__name__}")
    current = {k: v for k, v in job.resolved.items() if k != "hydra"}
    before = {str(k): v for k, v in recorded.items()}
    old, new = flatten(before), flatten(current)
    changed = [k for k in changed_keys(before, current) if not resumable(k)]
    if changed:
        shown = ", ".join(f"{k} {_show(old, k)} -> {_show(new, k)}" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise ConfigError(
            f"run_dir {run_dir} holds a run with other settings: {shown}{more}; rerun with its settings "
            f"(see {path}), choose another run_dir, or add resume_changed=true to continue it with these"
        )


def _show(flat: Mapping[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "(absent)"
