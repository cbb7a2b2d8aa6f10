"""Training choices that configs name and that are checked before Lightning is imported: the
optimizer (any ``torch.optim`` class) and the loss target.

EDM2 (Karras et al. 2024) trains with Adam, betas (0.9, 0.99), eps 1e-8; the learning rate is
never part of the optimizer's arguments because the EDM2 schedule sets it before every step.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

EDM2_ADAM_KWARGS = {"betas": (0.9, 0.99), "eps": 1e-8}
DEFAULT_OPTIMIZER = {"name": "Adam", "kwargs": EDM2_ADAM_KWARGS}
TARGETS = ("data", "exact")
"""Loss targets: the training sample, or the data's exact posterior mean (closed-form data only)."""


def resolve_optimizer(spec: Mapping[str, Any] | None) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(torch.optim class, its keyword arguments)`` for ``{"name": ..., "kwargs": ...}``.

    ``kwargs`` None means EDM2's betas (0.9, 0.99) and eps 1e-8 for Adam and AdamW, torch's
    defaults for any other class; ``lr`` may not be given (the schedule sets it). ``ValueError``
    names the bad key."""
    spec = dict(spec or DEFAULT_OPTIMIZER)
    name = spec.get("name")
    cls = getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
        raise ValueError(f"optimizer.name={name!r}: expected a torch.optim optimizer class such as 'Adam', 'AdamW' or 'SGD'")
    kwargs = spec.get("kwargs")
    kwargs = dict(EDM2_ADAM_KWARGS if name in ("Adam", "AdamW") else {}) if kwargs is None else dict(kwargs)
    if "lr" in kwargs:
        raise ValueError("optimizer.kwargs.lr: the learning rate comes from train.lr_ref and its schedule; remove it")
    try:
        inspect.signature(cls).bind(None, **kwargs)
    except TypeError as error:
        raise ValueError(f"optimizer.kwargs {sorted(kwargs)} do not fit torch.optim.{name}: {error}") from None
    return cls, kwargs
