"""Named places in a network's forward where sampling-time perturbations
(``autoguide.sample.perturb``) replace values for some rows of the batch.

Every residual block of the UNet (``nets.unet.Block``) and of the MLP (``nets.mlp.MLPBlock``),
and every hidden layer of the energy MLP (``nets.energy.EnergyDenoiser``, through
``LayerPoints``), has two:

- ``branch_point(y) -> y``: the block's residual branch (its hidden activation), where training
  dropout acts; kept dropout (in-situ autoguidance) masks it.
- ``output_point(skip, out) -> out``: the block's output next to the value it would be without
  its branch (the skip path); layer skip returns ``skip``.

A network lists its blocks by name with ``blocks()``. Hook points have no parameters, so state
dicts, checkpoints and exports do not see them; unhooked, each is the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Module):
    """The identity on its last argument (the hook sees all of them)."""

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        return values[-1]


class LayerPoints(nn.Module):
    """The two hook points of a block that has no module of its own (a hidden layer of the
    energy MLP)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_point = HookPoint()
        self.output_point = HookPoint()
