"""Several power-function EMAs of one network, advanced by the training image count.

Each tracked EMA is a frozen copy of the network in eval mode (so no training-mode forward,
e.g. EDM2's forced weight normalisation, ever rewrites its weights). After training moved
from ``nimg - dt`` to ``nimg`` images, every parameter is updated as
``ema <- beta ema + (1 - beta) net`` with ``beta = (1 - dt / nimg)^(gamma + 1)``
(see ``power.ema_beta``); buffers (e.g. fixed Fourier frequencies) are copied, not averaged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from autoguide.ema.power import ema_beta, sigma_rel_to_gamma


def _validated_stds(stds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in stds)
    if not values:
        raise ValueError("need at least one EMA std to track, got an empty list")
    if len(set(values)) != len(values):
        raise ValueError(f"EMA stds must be distinct, got {list(values)}")
    for s in values:
        sigma_rel_to_gamma(s)  # raises with the valid range
    return values


class PowerEMA:
    """Power-function EMAs with the relative stds ``stds`` of ``net``, valid at ``nimg``.

    ``modules[std]`` is the averaged copy of the network (eval mode, no grads, same device
    and dtype as ``net`` when created).
    """

    def __init__(self, net: nn.Module, stds: Sequence[float], nimg: int = 0) -> None:
        self.stds = _validated_stds(stds)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.stds)
        self.nimg = int(nimg)
        self.modules: dict[float, nn.Module] = {}
        for std in self.stds:
            ema = copy.deepcopy(net).eval()
            ema.requires_grad_(False)
            self.modules[std] = ema

    @torch.no_grad()
    def update(self, net: nn.Module, nimg: int) -> bool:
        """Advance every EMA to ``nimg`` with the weights of ``net``; no-op if ``nimg`` has
        not increased. Returns whether an update happened."""
        nimg = int(nimg)
        if nimg < self.nimg:
            raise ValueError(f"image count went backwards: EMAs are at nimg {self.nimg}, got {nimg}")
        if nimg == self.nimg:
            return False
        dt = nimg - self.nimg
        net_params = [p.detach() for p in net.parameters()]
        net_buffers = list(net.buffers())
        for gamma, ema in zip(self.gammas, self.modules.values(), strict=True):
            ema_params: list[torch.Tensor] = list(ema.parameters())
            ema_buffers = list(ema.buffers())
            if len(ema_params) != len(net_params) or len(ema_buffers) != len(net_buffers):
                raise ValueError("the network's parameters or buffers changed since the EMAs were made")
            torch._foreach_lerp_(ema_params, net_params, 1.0 - ema_beta(nimg, dt, gamma))  # one kernel for all tensors
            if ema_buffers:
                torch._foreach_copy_(ema_buffers, net_buffers)
        self.nimg = nimg
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (tensors, numbers, lists) for a training checkpoint."""
        return {
            "nimg": self.nimg,
            "stds": list(self.stds),
            "emas": [self.modules[s].state_dict() for s in self.stds],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict()``; the tracked stds must be the same."""
        stds = tuple(float(s) for s in state["stds"])
        if stds != self.stds:
            raise ValueError(
                f"checkpoint tracks EMA stds {list(stds)} but this run tracks {list(self.stds)}; "
                "resume with the same stds (post-hoc EMA needs the same snapshots throughout)"
            )
        for std, sd in zip(self.stds, state["emas"], strict=True):
            self.modules[std].load_state_dict(sd)
        self.nimg = int(state["nimg"])
