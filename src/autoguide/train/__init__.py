"""Training: the one LightningModule for every model role, the typed recipe (``TrainSettings``),
image-counted schedules, atomic checkpoints with exact resume, sample pictures, and the run
itself (``train``, driven by the ``autoguide-train`` app).

``DiffusionModule`` and ``train`` are imported on first use (PEP 562) so that the light
helpers (``autoguide.train.recipe``, ``autoguide.train.plan``) do not pull in Lightning.
"""

from autoguide.core.lazy import lazy_getattr

_EXPORTS = {
    "DiffusionModule": "module",
    "TrainSettings": "recipe",
    "train": "run",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
