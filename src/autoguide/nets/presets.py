"""Network presets: the YAML files ``conf/net/<name>.yaml`` are the preset table.

EDM2 (Karras et al. 2024, Table 2 / Appendix): img512 models are latent (64x64x4) with
model_channels 64/128/192/256/320/384/448 for XXS..XXL; img64 models are pixel-space RGB.
The CPU-sized ``mnist-*`` and ``toy-mlp`` presets are this project's own.
"""

from __future__ import annotations

from typing import Any

import yaml

from autoguide.config_dir import config_dir


def _preset_dir():
    return config_dir() / "net"


def preset_names() -> list[str]:
    """All preset names (file stems under ``conf/net``)."""
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def get_preset(name: str) -> dict[str, Any]:
    """The network config of preset ``name``; ``KeyError`` listing the valid names."""
    path = _preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown network preset {name!r}; valid presets: {', '.join(preset_names())}")
    with open(path) as f:
        return dict(yaml.safe_load(f))


class _PresetTable:
    """Read-only mapping view of the presets (``PRESETS["img512-s"]``)."""

    def __getitem__(self, name: str) -> dict[str, Any]:
        return get_preset(name)

    def __iter__(self):
        return iter(preset_names())

    def __len__(self) -> int:
        return len(preset_names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in preset_names()


PRESETS = _PresetTable()
