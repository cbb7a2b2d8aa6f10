"""Temporary perturbations of a network that act on a slice of the batch only.

Each perturbation is a frozen (hashable) description; ``apply(net, rows, sigma, streams)`` is
a context manager that registers forward hooks on the network, perturbs only batch rows
``rows`` (so the perturbed negative rides in the same forward as the positive rows) and
removes every hook on exit, leaving the network exactly as it was.

Hook points (docs/design.md, "Contracts between parts"): the residual blocks
``net.blocks()`` (their ``branch_point`` / ``output_point``, ``nets.hooks``), the attention
ops ``net.attention_ops()`` (``forward(q, k, v, grid_hw)``, q/k/v ``[N, heads, tokens, ch]``)
and the Fourier noise embedding
``net.backbone.emb_fourier`` (``net.unet.emb_fourier`` for the UNet).

- ``IdentityAttention`` (PAG, Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with
  Perturbed-Attention Guidance"): the attention map becomes the identity, so the op returns
  its values ``v`` and the block's output is the projected values.
- ``BlurredQueries`` (SEG, Hong 2024, "Smoothed Energy Guidance"): the queries, seen as
  images on the token grid, are blurred by a Gaussian of std ``blur_sigma`` tokens (see
  ``blur``); blurring queries blurs the attention logits, i.e. smooths the energy landscape.
  The blurred queries are not re-normalised.
- ``NoisyEmbedding`` (TSG, Sadat et al. 2024, "No Training, No Problem: Rethinking
  Classifier-Free Guidance for Diffusion Models", Sec. 4): the noise-level embedding ``e`` is
  replaced by ``e + alpha(sigma) n`` with ``n ~ N(0, I)`` drawn per image and evaluation.
  In EDM terms we use ``alpha(sigma) = scale * t^exponent`` with the normalised time
  ``t = sigma / sqrt(sigma^2 + sigma_data^2)`` in ``[0, 1)`` (``exponent = 0``: constant).
- ``SkippedBlocks`` (layer skip: SD3.5's skip-layer guidance; spatiotemporal skip guidance,
  Hyung et al. 2024): the residual branch of ``blocks`` is skipped, each block's output becomes
  its skip path (``output_point(skip, out) -> skip``, ``nets.hooks``).
- ``KeptDropout`` (in-situ autoguidance, arXiv 2510.17136, "Guiding a diffusion model with
  itself using dropout"): dropout with rate ``p`` stays on at sampling on the residual branch of
  ``blocks`` (default: all), ``y -> y * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` drawn per
  image and evaluation from the image's seed.
- ``capture_attention`` (SAG, Hong et al. 2023): records the attention map
  ``softmax(q k^T / sqrt(ch))`` of the chosen op for the given rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from autoguide.sample.blur import gaussian_blur_2d
from autoguide.sample.seeds import SeedStreams

_BLOCK_NAME = re.compile(r"^(enc|dec)\.(\d+)x(\d+)_")


def attention_ops(net: nn.Module) -> dict[str, nn.Module]:
    """``net.attention_ops()`` or ``{}`` for a network without self-attention."""
    ops = getattr(net, "attention_ops", None)
    return dict(ops()) if callable(ops) else {}


def default_attention_block(names: Sequence[str]) -> str:
    """The bottleneck: the first decoder op at the lowest resolution (``dec.8x8_in0`` for EDM2)."""

    def resolution(name: str) -> int:
        match = _BLOCK_NAME.match(name)
        return int(match.group(2)) if match else 1 << 30

    decoder = [n for n in names if n.startswith("dec.")] or list(names)
    return min(decoder, key=resolution)


def resolve_attention_blocks(net: nn.Module, blocks: Sequence[str] | None, what: str) -> tuple[str, ...]:
    """Validate block names against ``net.attention_ops()``; ``None`` gives the default block.

    Raises ``ValueError`` listing the valid names for an unknown name.
    """
    ops = attention_ops(net)
    if not ops:
        raise ValueError(f"{what} perturbs self-attention, but the network ({type(net).__name__}) has no attention ops")
    return _chosen(list(ops), blocks, default_attention_block(list(ops)), what, "attention block")


def _chosen(names: Sequence[str], blocks: Sequence[str] | None, default: str, what: str, noun: str) -> tuple[str, ...]:
    """``blocks`` checked against ``names`` (``ValueError`` listing them), or ``(default,)``."""
    if blocks is None:
        return (default,)
    if isinstance(blocks, str) or not blocks:
        raise ValueError(f"{what}: blocks must be a non-empty list of {noun} names, got {blocks!r}")
    unknown = [b for b in blocks if b not in names]
    if unknown:
        raise ValueError(f"{what}: unknown {noun}(s) {unknown}; valid names: {', '.join(names)}")
    return tuple(blocks)


def noise_embedding(net: nn.Module) -> nn.Module:
    """The Fourier noise embedding ``net.backbone.emb_fourier``; ``ValueError`` if absent."""
    module = getattr(getattr(net, "backbone", None), "emb_fourier", None)
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"TSG perturbs the noise embedding net.backbone.emb_fourier, which this network "
            f"({type(net).__name__}) lacks"
        )
    return module


def _attention_args(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The ``q, k, v, grid_hw`` arguments of an attention op call, by name."""
    named = dict(zip(("q", "k", "v", "grid_hw"), args, strict=False))  # args: a prefix of the four
    named.update(kwargs)
    return named


@contextmanager
def _registered(handles: Iterable[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    registered = list(handles)
    try:
        yield
    finally:
        for handle in registered:
            handle.remove()


def _hook_attention(net: nn.Module, blocks: Sequence[str] | None, what: str, hook: Any, pre: bool = False):
    """Register ``hook`` (with kwargs; a forward pre-hook if ``pre``) on the attention ops of
    ``blocks``; a context manager that removes it."""
    ops = attention_ops(net)
    names = resolve_attention_blocks(net, blocks, what)
    register = "register_forward_pre_hook" if pre else "register_forward_hook"
    return _registered(getattr(ops[b], register)(hook, with_kwargs=True) for b in names)


def _blur_tokens(x: torch.Tensor, grid_hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """Blur ``x [N, heads, tokens, ch]`` over its ``(H, W)`` token grid."""
    n, heads, tokens, ch = x.shape
    h, w = grid_hw
    grid = x.transpose(2, 3).reshape(n, heads, ch, h, w)
    return gaussian_blur_2d(grid, sigma).reshape(n, heads, ch, tokens).transpose(2, 3)


@dataclass(frozen=True)
class IdentityAttention:
    """PAG: the self-attention map of ``blocks`` replaced by the identity (output = ``v``)."""

    blocks: tuple[str, ...] | None = None

    def validate(self, net: nn.Module) -> None:
        resolve_attention_blocks(net, self.blocks, "PAG")

    def apply(self, net: nn.Module, rows: slice, sigma: torch.Tensor, streams: SeedStreams | None):
        def hook(module, args, kwargs, output):
            out = output.clone()
            out[rows] = _attention_args(args, kwargs)["v"][rows].to(out.dtype)
            return out

        return _hook_attention(net, self.blocks, "PAG", hook)


@dataclass(frozen=True)
class BlurredQueries:
    """SEG: queries of ``blocks`` blurred over the token grid with std ``blur_sigma`` tokens."""

    blur_sigma: float
    blocks: tuple[str, ...] | None = None

    def validate(self, net: nn.Module) -> None:
        resolve_attention_blocks(net, self.blocks, "SEG")
        if not self.blur_sigma >= 0:
            raise ValueError(f"SEG: blur_sigma must be >= 0 (or inf), got {self.blur_sigma}")

    def apply(self, net: nn.Module, rows: slice, sigma: torch.Tensor, streams: SeedStreams | None):
        def hook(module, args, kwargs):
            named = _attention_args(args, kwargs)
            q = named["q"].clone()
            q[rows] = _blur_tokens(q[rows], named["grid_hw"], self.blur_sigma)
            if args:
                return (q, *args[1:]), kwargs
            return args, {**kwargs, "q": q}

        return _hook_attention(net, self.blocks, "SEG", hook, pre=True)


@dataclass(frozen=True)
class NoisyEmbedding:
    """TSG: noise-level embedding ``e -> e + scale * t^exponent * n``, ``t = sigma/sqrt(sigma^2+sd^2)``."""

    scale: float
    exponent: float

    @property
    def stream(self) -> str:
        return f"tsg:{self.scale!r}:{self.exponent!r}"

    def validate(self, net: nn.Module) -> None:
        noise_embedding(net)
        if not (self.scale >= 0 and math.isfinite(self.scale) and self.exponent >= 0):
            raise ValueError(f"TSG: scale must be finite >= 0 and exponent >= 0, got {self.scale}, {self.exponent}")

    def noise_std(self, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
        """``alpha(sigma) = scale * (sigma / sqrt(sigma^2 + sigma_data^2))^exponent``."""
        t = sigma / torch.sqrt(sigma**2 + sigma_data**2)
        return self.scale * t**self.exponent

    def apply(self, net: nn.Module, rows: slice, sigma: torch.Tensor, streams: SeedStreams | None):
        if streams is None:
            raise ValueError("TSG draws per-image noise: pass the images' seeds to the sampler")
        std = self.noise_std(sigma.to(torch.float64), float(cast(float, net.sigma_data)))

        def hook(module, args, output):
            out = output.clone()
            noise = streams.randn(self.stream, out.shape[1:], device=out.device)
            out[rows] = out[rows] + (std.to(out.device)[:, None] * noise).to(out.dtype)
            return out

        return _registered([noise_embedding(net).register_forward_hook(hook)])


def listed_blocks(net: nn.Module) -> dict[str, Any]:
    """``net.blocks()``: the residual blocks by name (``nets.hooks``), or none."""
    listed = getattr(net, "blocks", None)
    return dict(listed()) if callable(listed) else {}


def resolve_blocks(net: nn.Module, blocks: Sequence[str] | None, what: str) -> tuple[str, ...]:
    """Validate block names against ``net.blocks()``; ``None`` gives the UNet's bottleneck block
    (as PAG's default: ``dec.8x8_in0`` in EDM2) or the middle block of an MLP. Raises
    ``ValueError`` listing the valid names."""
    names = list(listed_blocks(net))
    if not names:
        raise ValueError(
            f"{what} acts on residual blocks, but the network ({type(net).__name__}) lists none (net.blocks())"
        )
    unet = any(name.startswith("dec.") for name in names)
    return _chosen(names, blocks, default_attention_block(names) if unet else names[len(names) // 2], what, "block")


@dataclass(frozen=True)
class SkippedBlocks:
    """Layer skip: the outputs of ``blocks`` (default: ``resolve_blocks``'s) replaced by their skip
    paths, i.e. their residual branches (and attention) removed."""

    blocks: tuple[str, ...] | None = None

    def validate(self, net: nn.Module) -> None:
        resolve_blocks(net, self.blocks, "layer skip")

    def apply(self, net: nn.Module, rows: slice, sigma: torch.Tensor, streams: SeedStreams | None):
        def hook(module, args, output):
            out = output.clone()
            out[rows] = args[0][rows].to(out.dtype)
            return out

        listed = listed_blocks(net)
        return _registered(
            listed[b].output_point.register_forward_hook(hook) for b in resolve_blocks(net, self.blocks, "layer skip")
        )


@dataclass(frozen=True)
class KeptDropout:
    """Dropout kept on at sampling: the residual branch of ``blocks`` (``None``: every block)
    times ``m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` per element, drawn from each image's stream."""

    p: float
    blocks: tuple[str, ...] | None = None

    @property
    def stream(self) -> str:
        return f"dropout:{self.p!r}"

    def names(self, net: nn.Module) -> tuple[str, ...]:
        """The blocks to drop in (checked against ``net.blocks()``)."""
        chosen = resolve_blocks(net, self.blocks, "dropout")
        return tuple(listed_blocks(net)) if self.blocks is None else chosen

    def validate(self, net: nn.Module) -> None:
        self.names(net)
        if not 0 < self.p < 1:
            raise ValueError(f"dropout: p must be in (0, 1), got {self.p}")

    def apply(self, net: nn.Module, rows: slice, sigma: torch.Tensor, streams: SeedStreams | None):
        if streams is None:
            raise ValueError("dropout draws per-image masks: pass the images' seeds to the sampler")

        def hook(module, args, output):
            keep = streams.rand(self.stream, output.shape[1:], device=output.device) >= self.p
            out = output.clone()
            out[rows] = out[rows] * (keep.to(out.dtype) / (1 - self.p))
            return out

        listed = listed_blocks(net)
        return _registered(listed[b].branch_point.register_forward_hook(hook) for b in self.names(net))


@contextmanager
def capture_attention(net: nn.Module, block: str, rows: slice) -> Iterator[dict[str, Any]]:
    """Record ``softmax(q k^T / sqrt(ch))`` ``[n, heads, tokens, tokens]`` of op ``block`` for
    ``rows`` under key ``"map"`` (and the token grid under ``"grid_hw"``) of the yielded dict."""
    op = attention_ops(net)[resolve_attention_blocks(net, [block], "SAG")[0]]
    record: dict[str, Any] = {}

    def hook(module, args, kwargs):
        named = _attention_args(args, kwargs)
        q, k = named["q"][rows].float(), named["k"][rows].float()
        record["map"] = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        record["grid_hw"] = tuple(named["grid_hw"])

    with _registered([op.register_forward_pre_hook(hook, with_kwargs=True)]):
        yield record


Perturbation = IdentityAttention | BlurredQueries | NoisyEmbedding | SkippedBlocks | KeptDropout
