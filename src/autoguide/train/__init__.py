"""Training: the one LightningModule for every model role, image-counted schedules,
atomic checkpoints with exact resume, sample pictures, and the Hydra entry point.

``DiffusionModule`` and ``train`` are imported on first use (PEP 562) so that the light
helpers (``autoguide.train.plan``) do not pull in Lightning.
"""

from autoguide.lazy import lazy_getattr

_EXPORTS = {
    "DiffusionModule": "module",
    "ConfigError": "plan",
    "train": "run",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
