"""Update rules (``autoguide.sample.rules``) against independent numpy computations on random
tensors, their identity cases, and their place in the guided denoiser."""

import math

import numpy as np
import pytest
import torch

from autoguide.sample.guidance import CFG, Autoguidance
from autoguide.sample.guidance_spec import TermSettings, build_term
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.rules import APG, GuidanceRule, ZeroStar, norm_threshold, optimized_scale, project

SHAPE = (5, 3, 4, 4)


def tensors(seed: int, count: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(count)]


def rows(t: torch.Tensor) -> np.ndarray:
    return t.reshape(t.shape[0], -1).numpy()


def numpy_project(delta: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parallel = np.stack([(d @ u) / (u @ u) * u for d, u in zip(delta, direction, strict=True)])
    return parallel, delta - parallel


def test_apg_parallel_part_is_parallel_to_d_pos_per_image():
    delta, d_pos, _ = tensors(0)
    parallel, orthogonal = project(delta, d_pos)
    ref_par, ref_orth = numpy_project(rows(delta), rows(d_pos))
    np.testing.assert_allclose(rows(parallel), ref_par, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rows(orthogonal), ref_orth, rtol=1e-12, atol=1e-12)
    for p, o, u in zip(rows(parallel), rows(orthogonal), rows(d_pos), strict=True):
        cosine = p @ u / (np.linalg.norm(p) * np.linalg.norm(u))
        assert abs(abs(cosine) - 1) < 1e-12  # parallel to D_pos
        assert abs(o @ u) < 1e-10  # the rest is orthogonal to it


@pytest.mark.parametrize("r", [0.5, 3.0, 1e6])
def test_norm_threshold_is_respected(r):
    delta, _, _ = tensors(1)
    out = norm_threshold(delta, r)
    norms = np.linalg.norm(rows(delta), axis=1)
    np.testing.assert_allclose(np.linalg.norm(rows(out), axis=1), np.minimum(norms, r), rtol=1e-12)
    np.testing.assert_allclose(
        rows(out) / np.linalg.norm(rows(out), axis=1, keepdims=True), rows(delta) / norms[:, None], rtol=1e-12
    )  # direction kept


@pytest.mark.parametrize("momentum", ["call", "step"])
def test_apg_matches_its_formula_with_momentum(momentum):
    """Two evaluations (two steps, or two calls): momentum ``D_t = delta_t + beta D_{t-1}``,
    threshold, projection; the change is ``(w - 1) (orth + eta par)``."""
    (d_pos1, d_neg1, x), (d_pos2, d_neg2, _) = tensors(2), tensors(3)
    eta, r, beta, w = 0.3, 4.0, -0.5, 2.5
    rule = GuidanceRule(apg=APG(eta=eta, r=r, beta=beta, momentum=momentum))
    state: dict = {}
    first = rule.change(w, x, d_pos1, d_neg1, state, 1.0, first=True)
    second = rule.change(w, x, d_pos2, d_neg2, state, 1.0, first=momentum == "step")

    def ref(delta: np.ndarray, d_pos: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(delta, axis=1, keepdims=True)
        delta = delta * np.minimum(1.0, r / norms)
        par, orth = numpy_project(delta, d_pos)
        return (w - 1) * (orth + eta * par)

    running1 = rows(d_pos1) - rows(d_neg1)
    running2 = rows(d_pos2) - rows(d_neg2) + beta * running1
    np.testing.assert_allclose(rows(first), ref(running1, rows(d_pos1)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rows(second), ref(running2, rows(d_pos2)), rtol=1e-12, atol=1e-12)


def test_cfg_zero_star_scale_minimises_the_distance():
    d_pos, d_neg, _ = tensors(4)
    scale = optimized_scale(d_pos, d_neg)
    for a, b, s in zip(rows(d_pos), rows(d_neg), scale.numpy(), strict=True):
        lstsq = np.linalg.lstsq(b[:, None], a, rcond=None)[0][0]  # argmin_s ||a - s b||
        assert s == pytest.approx(lstsq, rel=1e-12)
        best = np.linalg.norm(a - s * b)
        assert all(best < np.linalg.norm(a - (s + e) * b) for e in (-1e-3, 1e-3, -0.5, 0.5))
    assert torch.equal(optimized_scale(d_pos, torch.zeros_like(d_neg)), torch.zeros(SHAPE[0], dtype=torch.float64))


def test_apg_momentum_per_step_is_shared_by_the_calls_of_a_step():
    """Per step: a step's second (Heun) call uses the previous step's momentum and does not
    advance it; per call: every call advances it."""
    steps = [(tensors(20 + i), tensors(40 + i)) for i in range(3)]  # per step: the first call's and the second's
    beta = -0.5
    rule, state, momentum = GuidanceRule(apg=APG(eta=1.0, beta=beta)), {}, None
    for (pos1, neg1, x), (pos2, neg2, _) in steps:
        previous = 0 if momentum is None else beta * momentum
        momentum = pos1 - neg1 + previous
        torch.testing.assert_close(
            rule.change(2.0, x, pos1, neg1, state, 1.0, first=True), momentum, rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            rule.change(2.0, x, pos2, neg2, state, 1.0, first=False), pos2 - neg2 + previous, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("sigma", [0.05, 1.0, 80.0])
def test_cfg_zero_star_spaces(sigma):
    """``eps``: ``s*`` from ``x - D`` and ``D_neg <- x - s* (x - D_neg)``; ``flow`` (the paper's
    velocity ``(x - (1 + sigma) D) / sigma``): ``s*`` from ``x - (1 + sigma) D`` and
    ``D_neg <- (1 - s*) x / (1 + sigma) + s* D_neg``."""
    d_pos, d_neg, x = tensors(5)
    w = 3.0
    for space, a, b, scaled in [
        ("eps", rows(x - d_pos), rows(x - d_neg), lambda s: rows(x) - s[:, None] * rows(x - d_neg)),
        (
            "flow",
            rows(x - (1 + sigma) * d_pos),
            rows(x - (1 + sigma) * d_neg),
            lambda s: (1 - s[:, None]) * rows(x) / (1 + sigma) + s[:, None] * rows(d_neg),
        ),
    ]:
        out = GuidanceRule(zero_star=ZeroStar(space=space)).change(w, x, d_pos, d_neg, {}, sigma)
        s = np.array([(ai @ bi) / (bi @ bi) for ai, bi in zip(a, b, strict=True)])
        np.testing.assert_allclose(rows(out), (w - 1) * (rows(d_pos) - scaled(s)), rtol=1e-10, atol=1e-10)
    assert ZeroStar().space == "flow"


@pytest.mark.parametrize("phi", [0.7, 1.0])
def test_rescale_matches_its_formula(phi):
    d_pos, d_neg, x = tensors(6)
    w = 4.0
    out = GuidanceRule(rescale=phi).change(w, x, d_pos, d_neg, {}, 1.0)
    pos, guided = rows(d_pos), rows(d_pos + (w - 1) * (d_pos - d_neg))
    rescaled = guided * (pos.std(axis=1) / guided.std(axis=1))[:, None]  # Lin et al. 2024, eq. 15-16
    final = phi * rescaled + (1 - phi) * guided
    np.testing.assert_allclose(rows(d_pos + out), final, rtol=1e-12, atol=1e-12)
    if phi == 1.0:
        np.testing.assert_allclose(rows(d_pos + out).std(axis=1), pos.std(axis=1), rtol=1e-12)


def test_cap_limits_the_rms_change():
    d_pos, d_neg, x = tensors(7)
    plain = 2.0 * (d_pos - d_neg)
    cap = float(np.median(np.sqrt((rows(plain) ** 2).mean(axis=1))))  # some images over it, some under
    out = GuidanceRule(cap=cap).change(3.0, x, d_pos, d_neg, {}, 1.0)
    rms, plain_rms = (np.sqrt((rows(t) ** 2).mean(axis=1)) for t in (out, plain))
    np.testing.assert_allclose(rms, np.minimum(plain_rms, cap), rtol=1e-12)
    assert (plain_rms < cap).any() and (plain_rms > cap).any()


@pytest.mark.parametrize(
    "rule",
    [
        GuidanceRule(),
        GuidanceRule(apg=APG(eta=1.0, r=math.inf, beta=0.0)),
        GuidanceRule(rescale=0.0),
        GuidanceRule(cap=math.inf),
    ],
    ids=["default", "apg-identity", "phi-0", "cap-inf"],
)
def test_identity_cases_give_plain_guidance(rule):
    d_pos, d_neg, x = tensors(8)
    state: dict = {}
    for _ in range(3):  # momentum 0: no memory across evaluations
        torch.testing.assert_close(
            rule.change(2.2, x, d_pos, d_neg, state, 1.0), 1.2 * (d_pos - d_neg), rtol=1e-13, atol=1e-13
        )


def test_invalid_options_are_named():
    with pytest.raises(ValueError, match=r"apg.r must be > 0"):
        APG(r=0)
    with pytest.raises(ValueError, match=r"rescale \(phi\) must be in \[0, 1\]"):
        GuidanceRule(rescale=1.5)
    with pytest.raises(ValueError, match=r"zero_star.zero_steps must be an integer"):
        ZeroStar(zero_steps=-1)
    with pytest.raises(
        ValueError, match=r"cfg: apg: unknown key\(s\) \['gamma'\]; valid keys: \['beta', 'eta', 'momentum'"
    ):
        build_term(TermSettings.from_mapping({"kind": "cfg", "weight": 2.0, "apg": {"gamma": 1.0}}), lambda path: None)
    with pytest.raises(ValueError, match="cfg: cap must be > 0"):
        build_term(TermSettings.from_mapping({"kind": "cfg", "weight": 2.0, "cap": 0.0}), lambda path: None)


class Affine(torch.nn.Module):
    """A stand-in denoiser ``D(x) = a x + b`` that counts its calls."""

    label_dim, img_channels, img_resolution = 0, 3, 4

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b, self.calls = a, b, 0

    def forward(self, x, sigma, labels=None):
        self.calls += 1
        return self.a * x + self.b


def test_guided_denoiser_applies_the_rule_and_keeps_momentum_per_term():
    _, _, x = tensors(9)
    main, guide = Affine(0.9, 0.1), Affine(0.5, -0.2)
    apg = APG(eta=0.0, beta=-0.5)
    denoise = GuidedDenoiser(main, [Autoguidance(guide=guide, weight=2.0, apg=apg)])
    rule, state = GuidanceRule(apg=apg), {}
    for sigma, first in ((5.0, True), (2.0, False), (2.0, True)):  # step 0 (two calls), step 1
        if first and sigma != 5.0:
            denoise.end_step(x, 5.0, x, 2.0)
        d_pos, d_neg = main.a * x + main.b, guide.a * x + guide.b
        expected = d_pos + rule.change(2.0, x, d_pos, d_neg, state, sigma, first)
        torch.testing.assert_close(denoise(x, sigma), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("space", ["flow", "eps"])
@pytest.mark.parametrize("churn", [0.0, 40.0])
def test_cfg_zero_star_zero_init_zeroes_the_first_steps(space, churn):
    """``zero_steps = 2``: every denoiser call of sampler steps 0 and 1 returns the zero
    prediction (``x / (1 + sigma)`` in flow space, ``x`` in eps) without a network call, with
    Heun and with churn (which calls the denoiser at two new noise levels per step)."""
    from autoguide.sample.sampler import edm_sampler
    from autoguide.sample.sampler_settings import SamplerSettings
    from autoguide.sample.seeds import SeedStreams

    main, guide = Affine(0.9, 0.1), Affine(0.5, -0.2)
    zero = ZeroStar(zero_steps=2, space=space)
    denoise = GuidedDenoiser(main, [Autoguidance(guide=guide, weight=2.0, zero_star=zero)])
    seen: list[tuple[int, float, bool]] = []
    inner = denoise.__call__

    class Spy:
        end_step = denoise.end_step

        def __call__(self, x, sigma):
            out = inner(x, sigma)
            zero_d = x / (1 + sigma) if space == "flow" else x
            seen.append((denoise.step, sigma, torch.allclose(out, zero_d, rtol=1e-14, atol=1e-14)))
            return out

    settings = SamplerSettings(num_steps=5, S_churn=churn)
    edm_sampler(Spy(), torch.randn(2, 3, 4, 4, dtype=torch.float64), settings, SeedStreams([0, 1]))
    assert [zeroed for step, _, zeroed in seen] == [step < 2 for step, _, _ in seen]
    assert sum(step < 2 for step, _, _ in seen) == 4  # two Heun calls in each of steps 0 and 1
    assert main.calls == len(seen) - 4
    if churn:  # steps 0 and 1 call at four distinct noise levels: counting levels would zero step 0 only
        assert len({sigma for step, sigma, _ in seen if step < 2}) == 4
    # a term without zero-init, or at w = 1 (no guidance): never zeroed
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert not torch.equal(GuidedDenoiser(main, [CFG(weight=2.0, unconditional=guide)])(x, 80.0), x)
    off = GuidedDenoiser(main, [Autoguidance(guide=guide, weight=1.0, zero_star=zero)])
    assert torch.equal(off(x, 80.0), main.a * x + main.b)
