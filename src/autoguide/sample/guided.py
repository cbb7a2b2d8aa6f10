"""The guided denoiser: one positive network plus any guidance terms, evaluated efficiently.

``D(x, sigma) = D_pos + sum_k (w_k - 1) (D_pos - D_neg_k)`` over the terms active at
``sigma`` (docs/design.md, "Conventions"; one term: ``D_neg + w (D_pos - D_neg)``); a term
with an update rule (``autoguide.sample.rules``) adds ``rule.change(w, x, D_pos, D_neg, sigma)``
instead, which is the same for the default rule.

Sampler steps: the sampler (``edm_sampler``) calls ``end_step(x, sigma, x_next, sigma_next)``
after each step; the denoiser counts steps and knows which call is a step's first. APG's
per-step momentum and FBG's posterior estimate advance there. CFG-Zero*'s zero-init returns the
zero prediction (``D = x / (1 + sigma)`` in ``flow`` space, ``D = x`` in ``eps``; no network
evaluation) at every call of the first ``zero_steps`` sampler steps: with Heun, Euler or churn
alike, steps ``0 .. K-1`` output zero velocity, as the paper's first ``K`` steps (with churn a
step calls the denoiser at two new noise levels, so counting distinct levels would not count
steps).

Evaluation plan at each call:
1. The negatives of active terms are collected as requests; equal requests are evaluated once.
2. ``SameNetwork`` requests (CFG with the null label, ICG, TSG, PAG, SEG) are stacked under
   the positive rows into one batch ``[pos; neg_1; neg_2; ...]`` and evaluated in a single
   forward; each perturbation hook acts on its own rows only.
3. ``OtherNetwork`` requests (autoguidance, SIMS, CFG with an unconditional model): one
   forward of that network each.
4. ``DegradedInput`` (SAG): its attention map is captured during step 2, then one forward on
   the degraded input.
Terms with ``w = 1`` or outside their interval are never evaluated, so with no active term
``D`` is exactly the positive network's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from autoguide.sample.blur import gaussian_blur_2d
from autoguide.sample.guidance import DegradedInput, GuidanceTerm, NegativeRequest, OtherNetwork, SameNetwork
from autoguide.sample.perturb import attention_ops, capture_attention, default_attention_block
from autoguide.sample.sampler_settings import PRECISIONS
from autoguide.sample.seeds import SeedStreams

ICG_STREAM = "icg"


class GuidedDenoiser:
    """``D(x, sigma)`` of ``net`` guided by ``terms``, for one batch of images.

    ``labels``: one-hot ``[N, label_dim]`` or ``None``; ``streams``: the images' per-seed random
    streams (needed by ICG and TSG); ``precision``: ``fp32`` or ``bf16`` (autocast around
    every network call). Inputs and outputs are float64 (the sampler's state).
    """

    def __init__(
        self,
        net: nn.Module,
        terms: Sequence[GuidanceTerm] = (),
        labels: torch.Tensor | None = None,
        streams: SeedStreams | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        for term in terms:
            if not isinstance(term, GuidanceTerm):
                raise TypeError(f"guidance terms must be GuidanceTerm instances, got {type(term).__name__}")
            term.validate(net, conditional=labels is not None)
        self.net = net
        self.terms = tuple(terms)
        self.labels = labels
        self.streams = streams
        self.precision = precision
        self._random_labels: torch.Tensor | None = None
        self._states: dict[int, dict] = {id(term): {} for term in self.terms}  # per term: APG momentum, FBG estimate
        # CFG-Zero* zero-init: the term that guides with the largest K (its space gives the zero prediction)
        zeroing = [z for t in self.terms if t.guides and (z := t.rule.zero_star) is not None and z.zero_steps > 0]
        self._zero_init = max(zeroing, key=lambda z: z.zero_steps, default=None)
        self.step = 0  # sampler steps completed (``end_step`` calls)
        self._first = True  # the next call is the first of a sampler step

    def _call(
        self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """One network forward under the chosen precision, returned as float64."""
        device_type = x.device.type
        autocast = torch.autocast(device_type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
        with autocast:
            return model(x, sigma, labels).to(torch.float64)

    def _labels_for(self, labels: torch.Tensor, rule: str) -> torch.Tensor:
        """The labels ``rule`` gives the positive's one-hot ``labels``."""
        if rule == "same":
            return labels
        if rule == "null":
            return torch.zeros_like(labels)
        if self._random_labels is None:
            if self.streams is None:
                raise ValueError("ICG draws a random class per image: pass the images' seeds to the sampler")
            classes = self.streams.randint(ICG_STREAM, labels.shape[1], device=labels.device)
            self._random_labels = F.one_hot(classes, labels.shape[1]).to(labels.dtype)
        return self._random_labels

    def _batched_forward(
        self, x: torch.Tensor, sigma: torch.Tensor, in_batch: list[SameNetwork], degraded: list[DegradedInput]
    ) -> tuple[torch.Tensor, dict[NegativeRequest, torch.Tensor], dict[str, dict]]:
        """One forward of ``[x; x; ...]``: rows ``0..n`` are the positive, block ``j`` the ``j``-th
        in-batch negative (its labels, its perturbation hooks on its rows only). Returns the
        positive, the in-batch negatives and the attention captures SAG asked for."""
        n, k = x.shape[0], 1 + len(in_batch)
        labels = None
        if self.labels is not None:
            labels = torch.cat([self.labels] + [self._labels_for(self.labels, r.labels) for r in in_batch])
        captures: dict[str, dict] = {}
        with ExitStack() as stack:
            for j, request in enumerate(in_batch, start=1):
                if request.perturbation is not None:
                    rows = slice(j * n, (j + 1) * n)
                    stack.enter_context(request.perturbation.apply(self.net, rows, sigma, self.streams))
            for sag in degraded:
                block = self._attention_block(sag)
                if block not in captures:
                    captures[block] = stack.enter_context(capture_attention(self.net, block, slice(0, n)))
            xs = x if k == 1 else x.repeat(k, *([1] * (x.ndim - 1)))
            out = self._call(self.net, xs, sigma.repeat(k), labels)
        negatives: dict[NegativeRequest, torch.Tensor] = {
            request: out[j * n : (j + 1) * n] for j, request in enumerate(in_batch, start=1)
        }
        return out[:n], negatives, captures

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The guided ``D(x, sigma)`` for one noise level ``sigma`` shared by the batch."""
        first, self._first = self._first, False
        if self._zero_init is not None and self.step < self._zero_init.zero_steps:
            return self._zero_init.zero(x.to(torch.float64), float(sigma))
        active = [t for t in self.terms if t.is_active(sigma)]
        requests: list[NegativeRequest] = list(dict.fromkeys(t.negative() for t in active))
        in_batch = [r for r in requests if isinstance(r, SameNetwork)]
        degraded = [r for r in requests if isinstance(r, DegradedInput)]
        sigma_rows = torch.full((x.shape[0],), float(sigma), dtype=torch.float64, device=x.device)
        d_pos, negatives, captures = self._batched_forward(x, sigma_rows, in_batch, degraded)
        for request in requests:
            if isinstance(request, OtherNetwork):
                labels = None if request.null_labels else self.labels
                negatives[request] = self._call(request.model, x, sigma_rows, labels)
            elif isinstance(request, DegradedInput):
                capture = captures[self._attention_block(request)]
                negatives[request] = self._sag_negative(x, sigma_rows, d_pos, capture, request)
        d = d_pos
        for term in active:
            state = self._states[id(term)]
            d = d + term.rule.change(term.weight, x, d_pos, negatives[term.negative()], state, float(sigma), first)
        return d

    def end_step(self, x: torch.Tensor, sigma: float, x_next: torch.Tensor, sigma_next: float) -> None:
        """The sampler finished a step from ``(x, sigma)`` (after churn) to ``(x_next, sigma_next)``."""
        for term in self.terms:
            state = self._states[id(term)]
            term.rule.end_step(state, x.to(torch.float64), float(sigma), x_next.to(torch.float64), float(sigma_next))
        self.step += 1
        self._first = True

    def _attention_block(self, request: DegradedInput) -> str:
        return request.block or default_attention_block(list(attention_ops(self.net)))

    def _sag_negative(
        self, x: torch.Tensor, sigma: torch.Tensor, d_pos: torch.Tensor, capture: dict, request: DegradedInput
    ) -> torch.Tensor:
        """``D_neg = D(x') + (x - x')`` with ``x' = x0 + M (blur(x0) - x0) + (x - x0)`` (see ``DegradedInput``)."""
        n = x.shape[0]
        h, w = capture["grid_hw"]
        received = capture["map"].mean(dim=1).sum(dim=1)  # [n, tokens]: attention each token receives
        mask = (received > request.threshold).to(x.dtype).reshape(n, 1, h, w)
        mask = F.interpolate(mask, size=x.shape[-2:], mode="nearest")
        x0_degraded = d_pos + mask * (gaussian_blur_2d(d_pos, request.blur_sigma) - d_pos)
        x_degraded = x0_degraded + (x - d_pos)
        return self._call(self.net, x_degraded, sigma, self.labels) + (x - x_degraded)
