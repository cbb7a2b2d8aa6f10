"""Every update rule that diffusers' guiders implement, against those guiders on identical random
inputs over several sampler steps, in float64 (diffusers 0.42, ``diffusers.guiders``).

The guided denoiser runs with stand-in networks that return the prepared predictions; each step
diffusers' guider gets the same predictions in the space it would see them (x0 for APG, FDG,
rescale; ``eps = (x - D) / sigma`` or the flow velocity ``(x - (1 + sigma) D) / sigma`` for
CFG-Zero*, TCFG and MAMBO-G); the guided predictions are compared in that space. diffusers
casts CFG-Zero*'s scale and TCFG's SVD to float32 (``Tensor.float()``); those tests run it with
``float()`` kept in float64 (``float64_diffusers``), so both sides compute the same formula in
float64. Weight conventions
(docs/design.md, "Sampling"): Karras ``w`` is ``guidance_scale = w`` with the default
formulation, and ``guidance_scale = w - 1`` with ``use_original_formulation=True`` where the
rule projects the difference (APG, FDG: diffusers' default formulation adds the projected
difference to the *negative*, not to the positive).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers.guiders import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
    MagnitudeAwareGuidance,
    TangentialClassifierFreeGuidance,
)
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

from autoguide.sample.guidance import Autoguidance
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.spaces import prediction

SHAPE = (4, 3, 8, 8)
SIGMAS = [80.0, 12.0, 2.5, 0.6, 0.05]  # several sampler steps, one denoiser call each (Euler)
TOLERANCE = 1e-6


class Table(torch.nn.Module):
    """A stand-in network that returns the prepared output of each noise level."""

    label_dim, img_channels, img_resolution = 0, SHAPE[1], SHAPE[2]

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = dict(zip(SIGMAS, outputs, strict=True))

    def forward(self, x, sigma, labels=None):
        return self.outputs[float(sigma[0])]


def inputs(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per step: ``x`` (noise-level scaled), ``D_pos`` and ``D_neg`` (a correlated, weaker version)."""
    g = torch.Generator().manual_seed(seed)
    xs, pos, neg = [], [], []
    for sigma in SIGMAS:
        d_pos = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        pos.append(d_pos)
        neg.append(0.7 * d_pos + 0.5 * torch.randn(SHAPE, generator=g, dtype=torch.float64))
        xs.append(d_pos + sigma * torch.randn(SHAPE, generator=g, dtype=torch.float64))
    return xs, pos, neg


@pytest.fixture
def float64_diffusers(monkeypatch):
    """diffusers' ``x.float()`` upcasts kept in float64 for the test's duration."""
    monkeypatch.setattr(torch.Tensor, "float", lambda self: self.double())


def compare(rule: dict, guider, space: str, weight: float, seed: int = 0, flat: bool = False) -> None:
    """Run autoguide's guided denoiser (one term with ``rule``) and ``guider`` side by side; the
    largest difference of the guided prediction in ``space`` (the one diffusers computes in) must
    be within ``TOLERANCE``. ``flat``: diffusers gets ``[N, elements]`` (its MAMBO-G norm fails
    on 4-dim tensors with torch 2.13: ``torch.norm`` over three dims)."""
    xs, pos, neg = inputs(seed)
    denoise = GuidedDenoiser(Table(list(pos)), [Autoguidance(guide=Table(list(neg)), weight=weight, **rule)])
    for step, (x, d_pos, d_neg, sigma) in enumerate(zip(xs, pos, neg, SIGMAS, strict=True)):
        ours = denoise(x, sigma)
        sigma_next = SIGMAS[step + 1] if step + 1 < len(SIGMAS) else 0.0
        denoise.end_step(x, sigma, x, sigma_next)
        guider.set_state(step=step, num_inference_steps=len(SIGMAS), timestep=torch.tensor(sigma))
        p_pos, p_neg = prediction(space, x, d_pos, sigma), prediction(space, x, d_neg, sigma)
        if flat:
            p_pos, p_neg = p_pos.flatten(1), p_neg.flatten(1)
        theirs = guider.forward(p_pos, p_neg).pred.reshape(SHAPE)
        error = (prediction(space, x, ours, sigma) - theirs).abs().max().item()
        assert error <= TOLERANCE, f"step {step} (sigma {sigma}): max |p - p_diffusers| = {error:.3g}"


@pytest.mark.parametrize("norm_dims", [None, (2, 3)], ids=["per-image", "per-channel"])
def test_apg_with_momentum_threshold_and_rescale_matches_diffusers(norm_dims):
    eta, r, beta, phi, w = 0.2, 6.0, -0.5, 0.5, 3.0
    guider = AdaptiveProjectedGuidance(
        guidance_scale=w - 1,
        adaptive_projected_guidance_momentum=beta,
        adaptive_projected_guidance_rescale=r,
        adaptive_projected_guidance_norm_dim=norm_dims,
        eta=eta,
        guidance_rescale=phi,
        use_original_formulation=True,
    )
    guider.momentum_buffer = MomentumBuffer(beta)  # what its prepare_inputs does at step 0
    apg = {"eta": eta, "r": r, "beta": beta, "norm_dims": None if norm_dims is None else list(norm_dims)}
    compare({"apg": apg, "rescale": phi}, guider, "x0", w)


def test_rescale_matches_diffusers():
    compare({"rescale": 0.7}, ClassifierFreeGuidance(guidance_scale=4.0, guidance_rescale=0.7), "x0", 4.0)


@pytest.mark.parametrize("space", ["eps", "flow"])
def test_cfg_zero_star_matches_diffusers_in_its_space(space, float64_diffusers):
    """``eps``: diffusers fed ``(x - D) / sigma``; ``flow``: fed the flow velocity. Zero-init over
    the first two steps (diffusers' ``zero_init_steps``) included."""
    guider = ClassifierFreeZeroStarGuidance(guidance_scale=3.5, zero_init_steps=2)
    compare({"zero_star": {"space": space, "zero_steps": 2}}, guider, space, 3.5)


@pytest.mark.parametrize("space", ["x0", "eps", "flow"])
def test_mambo_g_matches_diffusers(space):
    guider = MagnitudeAwareGuidance(guidance_scale=5.0, alpha=2.0)
    compare({"mambo": {"alpha": 2.0, "space": space}}, guider, space, 5.0, flat=True)


@pytest.mark.parametrize("space", ["eps", "flow"])
def test_tcfg_matches_diffusers(space, float64_diffusers):
    compare({"tcfg": {"space": space}}, TangentialClassifierFreeGuidance(guidance_scale=3.0), space, 3.0)


def test_fdg_matches_diffusers():
    """Three bands, their own weights and parallel weights: diffusers' ``guidance_scales[k] =
    f_k (w - 1)``, ``parallel_weights[k] = eta_k`` with the original formulation."""
    pytest.importorskip("kornia")  # diffusers' FDG builds its pyramid with kornia
    from diffusers.guiders import FrequencyDecoupledGuidance

    w, weights, parallel = 4.0, [1.0, 0.6, 0.2], [1.0, 0.5, 0.0]
    guider = FrequencyDecoupledGuidance(
        guidance_scales=[f * (w - 1) for f in weights], parallel_weights=parallel, use_original_formulation=True
    )
    compare({"fdg": {"weights": weights, "parallel": parallel}}, guider, "x0", w)
