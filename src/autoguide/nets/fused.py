"""The fused speed kernels of the EDM2 network: the paper's layers (``nets.mp``, ``nets.conv``,
``nets.unet``; Karras et al. 2024, EDM2) computed in fewer passes over weights and activations,
with the same values and gradients up to rounding (``tests/test_nets_fused.py``).

- ``NormalizedWeight``: ``scale * normalize(p)`` of a weight that forced weight normalisation
  just normalised, from the norms that normalisation already took (``MPConv.used_weight``).
- ``mp_sum_into``: ``mp_sum(x, layer(inp, gain), t)`` as one fused add.
- ``block_forward``: a residual block with the ``1 / 0.596`` of ``mp_silu`` folded into the gains
  of the layers after it, ``mp_sum`` fused into ``conv_res1`` and ``attn_proj``, and ``q, k, v``
  of the attention as contiguous runs of channels.

``Fusable.fused`` is the switch: ``True`` (the default) runs these kernels, ``False`` the
paper's form; ``set_fused(net, enabled)`` sets it for every layer of a network. The flat
gradient buffer of training is ``autoguide.train.gradients`` (a network knows no optimizer).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from autoguide.nets.mp import SILU_RMS, normalize

Gain = float | torch.Tensor


class Fusable(nn.Module):
    """A layer with a paper form and a fused form of one computation; ``fused`` picks."""

    fused: bool = True


def set_fused(net: nn.Module, enabled: bool) -> nn.Module:
    """Run every ``Fusable`` layer of ``net`` in its fused form (``enabled``) or in the paper's form."""
    for module in net.modules():
        if isinstance(module, Fusable):
            module.fused = enabled
    return net


class NormalizedWeight(torch.autograd.Function):
    """``scale * normalize(p)`` of a weight ``p`` whose slices were just force-normalised, with
    ``d1 = eps + ||p|| / sqrt(m)`` per output channel already known (``MPConv.used_weight``).

    Forward ``p * scale / d1``; backward the Jacobian of ``normalize`` at ``p`` applied to ``g``:
    ``scale / d1 * (g - p (p . g) / (d1 sqrt(m) ||p||))`` per slice, with ``||p|| = (d1 - eps)
    sqrt(m)``: autograd through ``normalize`` (EDM2 Sec. 2.5) in three passes over the weight
    instead of about ten."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, d1: torch.Tensor, scale: float, eps: float) -> torch.Tensor:
        ctx.save_for_backward(p, d1)
        ctx.scale, ctx.eps = scale, eps
        return p * (scale / d1)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        p, d1 = ctx.saved_tensors
        root_m = math.sqrt(p[0].numel())
        dims = list(range(1, p.ndim))
        dot = (p * g).sum(dim=dims, keepdim=True)
        norm = ((d1 - ctx.eps) * root_m).clamp_min(torch.finfo(p.dtype).tiny)
        return (g - p * (dot / (d1 * root_m * norm))) * (ctx.scale / d1), None, None, None


class GainLayer(Protocol):
    """A magnitude-preserving linear layer (``nets.conv.MPConv``)."""

    def __call__(self, x: torch.Tensor, gain: Gain = 1.0) -> torch.Tensor: ...

    def used_weight(self, gain: Gain = 1.0) -> torch.Tensor: ...


def mp_sum_into(x: torch.Tensor, layer: GainLayer, inp: torch.Tensor, t: float, gain: float = 1.0) -> torch.Tensor:
    """``mp_sum(x, layer(inp, gain), t)`` in one pass over the activations.

    ``mp_sum(a, b, t) = (1 - t)/n a + t/n b`` with ``n = sqrt((1 - t)^2 + t^2)``; the linear
    layer absorbs ``t/n`` into its gain, leaving a single fused ``b' + (1 - t)/n a``.
    """
    n = math.sqrt((1 - t) ** 2 + t**2)
    return torch.add(layer(inp, gain=gain * t / n), x, alpha=(1 - t) / n)


class ResidualBlock(Protocol):
    """What ``block_forward`` reads of a residual block (``nets.unet.Block``)."""

    @property
    def flavor(self) -> str: ...
    @property
    def res_balance(self) -> float: ...
    @property
    def attn_balance(self) -> float: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def conv_res0(self) -> GainLayer: ...
    @property
    def conv_res1(self) -> GainLayer: ...
    @property
    def conv_skip(self) -> GainLayer | None: ...
    @property
    def attn_qkv(self) -> GainLayer: ...
    @property
    def attn_proj(self) -> GainLayer: ...
    def attn_op(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor: ...
    def block_input(self, x: torch.Tensor) -> torch.Tensor: ...
    def modulation(self, emb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...
    def branch(self, y: torch.Tensor) -> torch.Tensor: ...
    def block_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor: ...


def block_forward(block: ResidualBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``Block.forward`` fused: ``mp_silu(a) = silu(a) / 0.596`` feeds a linear layer each time,
    which takes the ``1 / 0.596`` into its gain, and the residual and attention ``mp_sum`` are
    ``mp_sum_into``. The residual branch (``branch``) holds ``0.596`` times the paper's values."""
    x = block.block_input(x)
    y = block.conv_res0(F.silu(x), gain=1 / SILU_RMS)
    y = block.branch(F.silu(y * block.modulation(emb, y.dtype)))
    if block.flavor == "dec" and block.conv_skip is not None:
        x = block.conv_skip(x)
    out = mp_sum_into(x, block.conv_res1, y, block.res_balance, gain=1 / SILU_RMS)
    if block.num_heads:
        out = mp_sum_into(out, block.attn_proj, attention(block, out), block.attn_balance)
    return block.block_output(x, out)


def attention(block: ResidualBlock, x: torch.Tensor) -> torch.Tensor:
    """``Block.attention`` with ``attn_qkv`` as one matrix product over channels-last pixels.

    ``attn_qkv``'s output channels are ``(head, ch, q/k/v)`` in EDM2's layout; its rows reordered
    to ``(q/k/v, head, ch)`` make each of ``q, k, v`` a contiguous run of channels per pixel."""
    n, c, h, w = x.shape
    heads = block.num_heads
    weight = block.attn_qkv.used_weight().reshape(heads, -1, 3, c).permute(2, 0, 1, 3).reshape(3 * c, c)
    pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view when x is channels-last
    qkv = (pixels @ weight.t().to(x.dtype)).reshape(n, h * w, 3, heads, -1)
    q, k, v = normalize(qkv, dim=4).permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, tokens, ch]
    y = block.attn_op(q, k, v, (h, w))
    return y.permute(0, 2, 1, 3).reshape(n, h, w, c).permute(0, 3, 1, 2)  # [N, C, H, W], channels-last
