"""The network's gradients as views into one flat buffer, so that zeroing them and replacing
their non-finite entries by zero (EDM2: "non-finite gradients are zeroed") is one kernel each,
not one per parameter.

Autograd accumulates into an existing ``.grad`` in place, so the views stay the gradients as
long as nobody replaces them (``zero_grad(set_to_none=True)`` would: ``DiffusionModule``
zeroes through ``zero_`` instead). If a gradient was replaced all the same, ``clean_`` notices
and cleans parameter by parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from autoguide.train.finite import max_norm


class FlatGradients:
    """One buffer holding the gradient of every parameter of ``params`` (which must share a
    device and dtype) as views; ``zero_`` and ``clean_`` act on the whole buffer. Each view has
    its parameter's strides (e.g. channels-last convolution weights), so autograd accumulates
    into it and the optimizer reads it without reordering."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        if len({(p.device, p.dtype) for p in self.params}) != 1:
            raise ValueError("FlatGradients needs parameters of one device and dtype")
        first = self.params[0]
        self.buffer = torch.zeros(sum(p.numel() for p in self.params), device=first.device, dtype=first.dtype)
        self.views: list[torch.Tensor] = []
        offset = 0
        for p in self.params:
            if not _dense(p):
                raise ValueError(
                    f"FlatGradients needs dense parameters; got one of shape {tuple(p.shape)}, strides {p.stride()}"
                )
            view = self.buffer.as_strided(p.shape, p.stride(), offset)
            p.grad = view
            self.views.append(view)
            offset += p.numel()

    def intact(self) -> bool:
        """Whether every parameter's gradient is still its view into the buffer."""
        return all(p.grad is view for p, view in zip(self.params, self.views, strict=True))

    def zero_(self) -> None:
        """Zero every gradient (restoring views a caller replaced)."""
        self.buffer.zero_()
        for p, view in zip(self.params, self.views, strict=True):
            p.grad = view

    def max_norm(self) -> torch.Tensor:
        """``max |g|`` over every gradient entry (0-dim, on the device); NaN or inf when any
        entry is non-finite."""
        if self.intact():
            return torch.linalg.vector_norm(self.buffer, ord=math.inf)
        return max_norm(p.grad for p in self.params if p.grad is not None)

    def clean_(self) -> None:
        """Replace NaN and +-inf in every gradient by zero."""
        if self.intact():
            torch.nan_to_num_(self.buffer, nan=0.0, posinf=0.0, neginf=0.0)
            return
        for p in self.params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill ``t.numel()`` consecutive places (any dimension order)."""
    order = sorted((stride, size) for stride, size in zip(t.stride(), t.shape, strict=True) if size > 1)
    expected = 1
    for stride, size in order:
        if stride != expected:
            return False
        expected *= size
    return True
