"""Training: the one LightningModule for every model role, image-counted schedules,
atomic checkpoints with exact resume, sample pictures, and the Hydra entry point.

``DiffusionModule`` and ``train`` are imported on first use (PEP 562) so that the light
helpers (``autoguide.train.plan``) do not pull in Lightning.
"""

import importlib

_EXPORTS = {
    "DiffusionModule": "module",
    "ConfigError": "plan",
    "train": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autoguide.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"autoguide.train.{_EXPORTS[name]}"), name)
