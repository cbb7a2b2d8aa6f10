"""The EDM2 UNet built from magnitude-preserving layers.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
config G (Fig. 21). Module and parameter names follow the reference network's state dict
(``enc['64x64_conv']``, ``enc['64x64_block0'].conv_res0.weight``, ``dec['8x8_in0']``,
``emb_fourier.freqs`` ...) so that released EDM2 weights load without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoguide.nets.conv import MPConv
from autoguide.nets.fused import Fusable, block_forward
from autoguide.nets.hooks import HookPoint
from autoguide.nets.mp import MPFourier, mp_cat, mp_silu, mp_sum, normalize


def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample with the box filter [1, 1] (EDM2 Sec. 2.4).

    ``down``: depthwise stride-2 convolution with the normalised 2x2 box = 2x2 average pooling.
    ``up``: transposed stride-2 convolution with the box filter times 4 = nearest-neighbour x2.
    """
    if mode == "keep":
        return x
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    raise ValueError(f"resample mode must be 'keep', 'down' or 'up', got {mode!r}")


class AttentionOp(nn.Module):
    """One self-attention operation: ``softmax(q k^T / sqrt(c)) v`` per head (cosine attention).

    Inputs ``q, k, v`` are ``[N, heads, tokens, ch]``, already pixel-normalised; ``grid_hw``
    is the token grid ``(H, W)``. This module is the single hook point for attention
    perturbations (PAG replaces the map by identity, SEG blurs the queries).
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class Block(Fusable):
    """EDM2 residual block (encoder or decoder flavour) with optional self-attention.

    ``x = resample(x)``; encoder: ``conv_skip`` if widths differ, then pixel norm;
    ``y = conv_res1(dropout(mp_silu(conv_res0(mp_silu(x)) * (emb_linear(emb, emb_gain) + 1))))``;
    decoder: ``conv_skip`` now; ``x = mp_sum(x, y, res_balance)``; attention with heads of
    ``channels_per_head`` channels mixed in by ``mp_sum(x, attn, attn_balance)``; clip.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256,
    ) -> None:
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"Block flavor must be 'enc' or 'dec', got {flavor!r}")
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        if self.num_heads:
            self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1])
            self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1])
            self.attn_op = AttentionOp()
        self.branch_point = HookPoint()  # (y) -> y: the residual branch, where dropout acts (nets.hooks)
        self.output_point = HookPoint()  # (skip path, output) -> output (nets.hooks)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The block in EDM2's form (docs/design.md, "EDM2 network"); ``fused``: the same in
        fewer passes (``nets.fused.block_forward``)."""
        if self.fused:
            return block_forward(self, x, emb)
        x = self.block_input(x)
        y = self.conv_res0(mp_silu(x))
        y = self.branch(mp_silu(y * self.modulation(emb, y.dtype)))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        out = mp_sum(x, self.conv_res1(y), self.res_balance)
        if self.num_heads:
            out = mp_sum(out, self.attn_proj(self.attention(out)), self.attn_balance)
        return self.block_output(x, out)

    def block_input(self, x: torch.Tensor) -> torch.Tensor:
        """``resample(x)``; in the encoder also ``conv_skip`` (if widths differ) and pixel norm."""
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)
        return x

    def modulation(self, emb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``emb_linear(emb, emb_gain) + 1`` per channel, ``[N, C, 1, 1]``."""
        return (self.emb_linear(emb, gain=self.emb_gain) + 1)[:, :, None, None].to(dtype)

    def branch(self, y: torch.Tensor) -> torch.Tensor:
        """The residual branch after dropout (training only), through its hook point."""
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        return self.branch_point(y)

    def block_output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``clip(out, -clip_act, clip_act)`` through the output hook point (``x``: the skip path)."""
        if self.clip_act is not None:
            out = F.hardtanh(out, -self.clip_act, self.clip_act)  # = clip, with a one-pass backward
        return self.output_point(x, out)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head cosine self-attention over the pixels of ``x`` (EDM2 Sec. 2.3), before
        ``attn_proj``: ``attn_qkv(x)``'s channels are ``[head, ch, (q, k, v)]``; q, k and v are
        each normalised over ``ch`` per pixel, then ``attn_op`` mixes the tokens."""
        n, c, h, w = x.shape
        qkv = normalize(self.attn_qkv(x).reshape(n, self.num_heads, -1, 3, h * w), dim=2)
        q, k, v = qkv.permute(3, 0, 1, 4, 2).unbind(0)  # each [N, heads, tokens, ch]
        y = self.attn_op(q, k, v, (h, w))
        return y.permute(0, 1, 3, 2).reshape(n, c, h, w)


class UNet(nn.Module):
    """EDM2 UNet (config G): MP convolutions, Fourier noise embedding, class embedding.

    Level widths ``model_channels * channel_mult``; noise-embedding width = the first level's,
    embedding width = the widest level's. The input gets an extra all-ones channel. Encoder
    outputs are skips; the decoder ``mp_cat``s the latest skip before each of its blocks.
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,
        channel_mult_emb: int | None = None,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        **block_kwargs,
    ) -> None:
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_dim = label_dim
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, "enc", "down", **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, "enc", attention=res in attn_resolutions, **block_kwargs
                )

        self.dec = nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values() if isinstance(block, MPConv | Block)]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, "dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, "dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, "dec", "up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, "dec", attention=res in attn_resolutions, **block_kwargs
                )
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])
        self.set_memory_format(torch.channels_last)

    def set_memory_format(self, memory_format: torch.memory_format) -> UNet:
        """Lay out activations and convolution weights in ``memory_format``: channels-last
        (NHWC, the default) lets oneDNN and cuDNN run the convolutions without reordering their
        operands on every call; ``torch.contiguous_format`` is the NCHW of the reference code.
        The values, names and shapes of the parameters are the same either way."""
        self.memory_format = memory_format
        for param in self.parameters():
            if param.ndim == 4:
                param.data = param.data.contiguous(memory_format=memory_format)
        return self

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """Embedding: ``mp_silu(mp_sum(emb_noise(fourier(c_noise)), emb_label(onehot sqrt(L)), 0.5))``."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional (label_dim > 0): class_labels are required")
            labels = class_labels * math.sqrt(class_labels.shape[1])
            emb = mp_sum(emb, self.emb_label(labels), t=self.label_balance)
        return mp_silu(emb)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1).contiguous(memory_format=self.memory_format)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)
