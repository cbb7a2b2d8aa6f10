"""The config tree and its typed schemas.

The Hydra configs live in ``conf/`` inside the package (``autoguide/conf``; the repository's
top-level ``conf`` links to it), so an installed wheel carries them. Primary configs side by
side, one per app: ``train.yaml``, ``generate.yaml``, ``eval.yaml`` (generate's options plus
metrics), ``sweep.yaml`` and ``sims_compare.yaml`` (eval's plus their grids), ``sims.yaml``;
groups shared by them: ``data``, ``net``, ``trainer``, ``logger``, ``callbacks``, ``paths``,
``hydra``, ``experiment``, ``debug``, ``sampler``, ``guidance``, ``metrics``.

The settings dataclasses are registered as Hydra structured configs in the group ``schema``
(``schema/train``, ``schema/sampler``, ``schema/sims``, ``schema/unet``, ``schema/mlp``,
``schema/energy_mlp``)
and the YAML nodes start from them (``defaults: [/schema/unet@_here_]``), so composition
rejects unknown keys and values of the wrong type, and the dataclass defaults are the
defaults. The sampling apps' primary configs (``autoguide.apps.sampling_configs``:
``schema/generate``, ``schema/eval``, ``schema/sweep``, ``schema/sims_compare``) are chosen as
``/schema@_here_: generate``, which a config that extends another overrides
(``override /schema@_here_: eval``). ``AUTOGUIDE_CONFIG_DIR`` points the apps at another tree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from autoguide.apps.sampling_configs import PRIMARY_CONFIGS
from autoguide.core.typed_settings import plain
from autoguide.nets.architectures import ARCHS
from autoguide.sample.sampler_settings import SamplerSettings
from autoguide.sims.sims_settings import SimsSettings
from autoguide.train.recipe import TrainSettings

SCHEMAS: dict[str, type] = {
    "train": TrainSettings,
    "sampler": SamplerSettings,
    "sims": SimsSettings,
    **ARCHS,
    **PRIMARY_CONFIGS,
}
PRESET_PROBE = "_net_preset"


def config_dir() -> Path:
    """Absolute path of the config tree: ``AUTOGUIDE_CONFIG_DIR`` if set, else the package's
    ``conf/``; ``FileNotFoundError`` naming where it looked."""
    env = os.environ.get("AUTOGUIDE_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "conf"
    if not path.is_dir():
        where = "AUTOGUIDE_CONFIG_DIR" if env else "the installed package"
        raise FileNotFoundError(
            f"autoguide config folder not found at {path} (from {where}); "
            "reinstall autoguide or fix AUTOGUIDE_CONFIG_DIR"
        )
    return path


def _writable(node: Any) -> Any:
    """``node`` with the read-only flag that frozen dataclasses set cleared at every level; free
    mappings inside (``train.optimizer.kwargs``) also take new keys."""
    if OmegaConf.is_config(node):
        OmegaConf.set_readonly(node, None)
        if OmegaConf.is_dict(node) and OmegaConf.get_type(node) is dict:
            OmegaConf.set_struct(node, False)
        for key in node.keys() if OmegaConf.is_dict(node) else range(len(node)):
            _writable(node._get_node(key))
    return node


def register_schemas() -> None:
    """Store the settings dataclasses in Hydra's ConfigStore as ``schema/<name>`` (writable
    typed nodes: YAML merges into them, unknown keys and wrong types are refused), and the
    probe config that ``get_preset`` composes."""
    store = ConfigStore.instance()
    for name, cls in SCHEMAS.items():
        store.store(group="schema", name=name, node=_writable(OmegaConf.structured(cls)))
    store.store(name=PRESET_PROBE, node={"defaults": [{"net": None}, "_self_"]})


WHOLE_NODES = ("metrics.reference",)
"""Nodes that an override with a mapping value replaces as a whole: Hydra merges a mapping into
the node, so a dataset config of another kind would keep the old one's keys and be refused."""


def replace_whole_nodes(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with each ``node={...}`` of a ``WHOLE_NODES`` node written as
    ``~node`` and ``+node={...}`` (delete, then add: a replacement, not a merge)."""
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and key in WHOLE_NODES and value.lstrip().startswith("{"):
            out += [f"~{key}", f"+{key}={value}"]
        else:
            out.append(arg)
    return out


def compose(config_name: str, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The composed primary config ``conf/<config_name>.yaml`` with ``overrides`` (no app run,
    no Hydra job; ``hydra`` settings only with ``return_hydra_config``; ``replace_whole_nodes``
    applied as the apps do)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        overrides = replace_whole_nodes(overrides)
        return hydra_compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in ``conf/<group>/``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def get_preset(name: str) -> dict[str, Any]:
    """The network config of preset ``net=<name>`` (composed: presets extend a base and the
    schema); ``KeyError`` listing the valid names."""
    if name not in group_options("net"):
        raise KeyError(f"unknown network preset {name!r}; valid presets: {', '.join(group_options('net'))}")
    return plain(compose(PRESET_PROBE, [f"net={name}"]).net)
