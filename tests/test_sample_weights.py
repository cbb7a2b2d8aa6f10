"""Weight rules without a diffusers counterpart (``autoguide.sample.weights``: the schedule over
sigma and feedback guidance) against the papers' equations computed in numpy, the Laplacian
pyramid against kornia, and the options' bad-input messages."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from autoguide.sample.guidance import Autoguidance
from autoguide.sample.guidance_spec import TermSettings, build_term
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.pyramid import from_pyramid, laplacian_pyramid
from autoguide.sample.rules import GuidanceRule
from autoguide.sample.weights import Feedback, WeightSchedule

SHAPE = (3, 2, 8, 8)


@pytest.mark.parametrize("shape", ["constant", "linear", "cosine"])
def test_weight_schedule_matches_its_formula(shape):
    """``w(sigma) = 1 + f(sigma) (w - 1)``, ``f`` ramping from ``start`` at ``sigma_start`` to
    ``end`` at ``sigma_end`` in log-sigma progress ``u``; clipped outside."""
    schedule = WeightSchedule(shape=shape, start=0.2, end=1.5, sigma_start=20.0, sigma_end=0.1)
    g = torch.Generator().manual_seed(0)
    d_pos, d_neg, x = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    w = 3.0
    for sigma in [80.0, 20.0, 5.0, 1.0, 0.3, 0.1, 0.01]:
        u = np.clip((np.log(20.0) - np.log(sigma)) / (np.log(20.0) - np.log(0.1)), 0, 1)
        f = {"constant": 0.2, "linear": 0.2 + 1.3 * u, "cosine": 1.5 + (0.2 - 1.5) * 0.5 * (1 + np.cos(np.pi * u))}[
            shape
        ]
        assert schedule.factor(sigma) == pytest.approx(f, abs=1e-14)
        out = GuidanceRule(schedule=schedule).change(w, x, d_pos, d_neg, {}, sigma)
        np.testing.assert_allclose(out.numpy(), (f * (w - 1)) * (d_pos - d_neg).numpy(), rtol=1e-12, atol=1e-12)


class Table(torch.nn.Module):
    """A stand-in network with a fixed random output per call (from its seed and call count)."""

    label_dim, img_channels, img_resolution = 0, SHAPE[1], SHAPE[2]

    def __init__(self, seed: int, scale: float = 1.0) -> None:
        super().__init__()
        self.seed, self.scale, self.outputs = seed, scale, []

    def forward(self, x, sigma, labels=None):
        g = torch.Generator().manual_seed(self.seed + 1000 * len(self.outputs))
        self.outputs.append(self.scale * torch.randn(SHAPE, generator=g, dtype=torch.float64))
        return self.outputs[-1]


@pytest.mark.parametrize("weight", [1.0, 1.8])
def test_feedback_guidance_follows_the_paper_over_heun_steps(weight):
    """FBG (Koulischer et al. 2025) over four Heun steps, in numpy: ``lambda = e^l / (e^l - (1 -
    pi))`` held for both calls of a step, ``w = weight + lambda - 1`` (the paper's hybrid),
    ``l`` updated from the step's first predictions with ``mu_c = (s'^2/s^2) x + (1 - s'^2/s^2) D_c``,
    ``var = (s^2 - s'^2) s'^2 / s^2`` and clipped to ``[ln((1 - pi) l_max / (l_max - 1)), 3]``."""
    pi, temp, offset, max_weight = 0.6, 0.01, -0.05, 4.0
    main, guide = Table(1), Table(2, scale=0.8)
    fbg = Feedback(pi=pi, temp=temp, offset=offset, max_weight=max_weight)
    denoise = GuidedDenoiser(main, [Autoguidance(guide=guide, weight=weight, fbg=fbg)])
    sigmas = [10.0, 4.0, 1.5, 0.5, 0.1]
    g = torch.Generator().manual_seed(7)
    ell, spread = np.zeros(SHAPE[0]), []
    lowest = math.log((1 - pi) * max_weight / (max_weight - 1))
    for s, s_next in itertools.pairwise(sigmas):
        lam = np.exp(ell) / (np.exp(ell) - (1 - pi))
        w = (weight + lam - 1)[:, None, None, None]
        x = s * torch.randn(SHAPE, generator=g, dtype=torch.float64)
        first = denoise(x, s).numpy()
        pos, neg = main.outputs[-1].numpy(), guide.outputs[-1].numpy()
        np.testing.assert_allclose(first, neg + w * (pos - neg), rtol=1e-12, atol=1e-12)
        keep = s_next**2 / s**2
        var = (s**2 - s_next**2) * keep
        x_next = (
            keep * x
            + (1 - keep) * torch.from_numpy(first)
            + math.sqrt(var) * torch.randn(SHAPE, generator=g, dtype=torch.float64)
        )
        second = denoise(x_next, s_next).numpy()  # Heun's correction: same weight
        np.testing.assert_allclose(
            second,
            guide.outputs[-1].numpy() + w * (main.outputs[-1].numpy() - guide.outputs[-1].numpy()),
            rtol=1e-12,
            atol=1e-12,
        )
        denoise.end_step(x, s, x_next, s_next)
        xs, xn = x.numpy(), x_next.numpy()
        err = [((xn - (keep * xs + (1 - keep) * d)) ** 2).reshape(SHAPE[0], -1).sum(1) for d in (pos, neg)]
        ell = np.clip(ell - temp / (2 * var) * (err[0] - err[1]) + offset, lowest, 3.0)
        spread.append(np.ptp(ell))
    assert max(spread) > 0.01  # the weight differs between images: state-dependent


def test_feedback_weight_is_capped_and_its_term_is_kept_at_weight_one():
    fbg = Feedback(pi=0.5, max_weight=3.0)
    assert fbg.weight(torch.tensor([fbg.min_log_posterior])).item() == pytest.approx(3.0)
    assert fbg.weight(torch.tensor([0.0])).item() == pytest.approx(2.0)  # l = 0: 1 / pi
    term = build_term(
        TermSettings.from_mapping({"kind": "autoguidance", "weight": 1.0, "fbg": {"pi": 0.5}, "model": "g"}),
        lambda path: Table(0),
    )
    assert term is not None and term.is_active(1.0)
    assert (
        build_term(
            TermSettings.from_mapping({"kind": "autoguidance", "weight": 1.0, "model": "g"}), lambda path: Table(0)
        )
        is None
    )


def test_laplacian_pyramid_matches_kornia_and_inverts():
    kornia = pytest.importorskip("kornia")
    x = torch.randn(2, 3, 16, 32, dtype=torch.float64)
    bands = laplacian_pyramid(x, 4)
    for ours, theirs in zip(bands, kornia.geometry.transform.build_laplacian_pyramid(x, 4), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(from_pyramid(bands), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fdg": {"weights": [1.0, -0.5]}}, r"cfg: fdg.weights must be >= 0 .* got \[1.0, -0.5\]"),
        ({"fdg": {"weights": [1.0, 0.5], "parallel": [1.0]}}, r"cfg: fdg.parallel needs one value per band \(2\)"),
        (
            {"schedule": {"shape": "exponential"}},
            r"cfg: schedule.shape must be one of constant, linear, cosine, got 'exponential'",
        ),
        (
            {"schedule": {"shape": "linear", "sigma_start": 0.1, "sigma_end": 1.0}},
            r"cfg: schedule: need sigma_start > sigma_end > 0",
        ),
        ({"apg": {"norm_dims": [0]}}, r"cfg: apg.norm_dims must be distinct non-batch dims"),
        ({"apg": {"momentum": "always"}}, r"cfg: apg.momentum must be one of step, call"),
        ({"zero_star": {"space": "x0"}}, r"cfg: zero_star.space must be one of flow, eps, got 'x0'"),
        ({"mambo": {"alpha": -1}}, r"cfg: mambo.alpha must be >= 0"),
        ({"fbg": {"pi": 1.5}}, r"cfg: fbg.pi must be in \(0, 1\)"),
        ({"tcfg": {"space": "v"}}, r"cfg: tcfg.space must be one of x0, eps, flow"),
    ],
)
def test_bad_rule_options_name_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        build_term(TermSettings.from_mapping({"kind": "cfg", "weight": 2.0, **options}), lambda path: None)


def test_options_that_do_not_fit_the_samples_are_refused_before_sampling():
    """``norm_dims`` out of range and FDG bands on points (or sizes the bands cannot halve)."""
    image_net, point_net = Table(0), Table(0)
    point_net.img_channels, point_net.img_resolution = 2, 0
    with pytest.raises(ValueError, match=r"autoguidance: apg.norm_dims=\[4\] out of range for 4-dim batches"):
        GuidedDenoiser(image_net, [Autoguidance(guide=Table(1), weight=2.0, apg={"norm_dims": [4]})])
    with pytest.raises(ValueError, match=r"autoguidance: fdg.weights: needs images \[N, C, H, W\]"):
        GuidedDenoiser(point_net, [Autoguidance(guide=point_net, weight=2.0, fdg={"weights": [1.0, 0.5]})])
    with pytest.raises(ValueError, match=r"autoguidance: fdg.weights: 5 bands need H and W divisible by 16, got 8x8"):
        GuidedDenoiser(image_net, [Autoguidance(guide=Table(1), weight=2.0, fdg={"weights": [1, 1, 1, 1, 1]})])


def test_feedback_parameters_from_the_papers_times():
    """``delta = ln((1 - pi) 3 / 2) / ((1 - t0) N)``, ``tau = |2 s^2(t1) delta / 10|`` with the
    step variances counted from the end and interpolated at ``t1 N``."""
    from autoguide.diffusion import edm_sigma_steps
    from autoguide.sample.weights import feedback_from_times

    steps = edm_sigma_steps(8, 0.002, 80.0, 7.0).tolist()
    fbg = feedback_from_times(0.9, 0.5, 0.4, steps, max_weight=4.0)
    s = np.array(steps[:-1])
    variance = np.zeros(8)
    variance[1:] = ((s[:-1] ** 2 - s[1:] ** 2) * s[1:] ** 2 / s[:-1] ** 2)[::-1]  # j-th step from the end
    delta = np.log(0.1 * 1.5) / (0.5 * 8)
    tau = abs(2 * (0.8 * variance[3] + 0.2 * variance[4]) * delta / 10)  # t1 N = 3.2
    assert (fbg.offset, fbg.temp, fbg.max_weight) == (
        pytest.approx(delta, rel=1e-12),
        pytest.approx(tau, rel=1e-12),
        4.0,
    )
