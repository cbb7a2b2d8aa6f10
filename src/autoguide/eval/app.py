"""Hydra plumbing shared by ``autoguide-eval`` and ``autoguide-sweep``.

Their config root is ``conf/eval/``; ``conf/generate/`` is added to Hydra's search path so that
their configs start from the sampler's own config (``defaults: [generate, ...]``): every
sampling option (``model``, ``guide``, ``guidance=...``, ``sampler.*``, ``class_labels``,
``batch_size``, ``precision``, ...) is spelt exactly as for ``autoguide-generate``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from autoguide.config_dir import config_dir


def search_path_override() -> str:
    """The Hydra override that puts ``conf/generate`` on the config search path."""
    return f"hydra.searchpath=[file://{config_dir() / 'generate'}]"


def run_app(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Run ``task`` as the Hydra app ``conf/eval/<config_name>.yaml`` with the command line."""
    import hydra

    sys.argv.insert(1, search_path_override())
    hydra.main(config_path=str(config_dir() / "eval"), config_name=config_name, version_base="1.3")(task)()


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config of ``conf/eval/<config_name>.yaml`` with ``overrides`` (no app run)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir() / "eval"), version_base="1.3"):
        return compose(config_name, overrides=[search_path_override(), *overrides])
