"""Loss, LR schedule and sigma grid against independent computations."""

import math

import numpy as np
import pytest
import torch

from autoguide.diffusion import edm2_loss, edm_sigma_steps, learning_rate, sample_sigma


def test_sigma_distribution_is_lognormal():
    g = torch.Generator().manual_seed(0)
    s = sample_sigma(200_000, -0.8, 1.6, g)
    assert s.log().mean().item() == pytest.approx(-0.8, abs=0.02)
    assert s.log().std().item() == pytest.approx(1.6, abs=0.02)


class FixedDenoiser(torch.nn.Module):
    """D(x) = 0.9 x, u(sigma) = sigma: simple enough to compute the loss by hand."""

    sigma_data = 0.5

    def forward(self, x, sigma, labels=None, return_logvar=False):
        return 0.9 * x, sigma.reshape(-1, 1, 1, 1).clone()


def test_edm2_loss_matches_hand_computation():
    y = torch.randn(4, 1, 2, 2)
    loss = edm2_loss(FixedDenoiser(), y, None, -0.8, 1.6, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sigma = (torch.randn(4, generator=g) * 1.6 - 0.8).exp().double()
    noise = torch.randn(y.shape, generator=g).double()
    yd = y.double()
    total = 0.0
    for i in range(4):
        s = sigma[i].item()
        lam = (s * s + 0.25) / (s * 0.5) ** 2
        d = 0.9 * (yd[i] + noise[i] * s)
        total += (lam / math.exp(s) * (d - yd[i]) ** 2 + s).sum().item()
    assert loss.item() == pytest.approx(total / y.numel(), rel=1e-5)


def test_edm2_loss_with_exact_target_regresses_the_given_target():
    """``exact_target`` replaces the clean sample y in (D - y)^2; it receives the noisy input,
    the noise levels and the labels, and a target equal to y gives the plain loss."""
    y = torch.randn(4, 1, 2, 2)
    labels = torch.eye(4)
    seen = {}

    def shifted(noisy, sigma, given_labels):
        seen.update(noisy=noisy, sigma=sigma, labels=given_labels)
        return torch.full_like(noisy, 0.25)

    loss = edm2_loss(FixedDenoiser(), y, labels, -0.8, 1.6, torch.Generator().manual_seed(3), exact_target=shifted)
    g = torch.Generator().manual_seed(3)
    sigma = (torch.randn(4, generator=g) * 1.6 - 0.8).exp()
    noisy = y + torch.randn(y.shape, generator=g) * sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(seen["noisy"], noisy)
    torch.testing.assert_close(seen["sigma"], sigma)
    assert seen["labels"] is labels
    lam = ((sigma**2 + 0.25) / (sigma * 0.5) ** 2).reshape(-1, 1, 1, 1)
    expected = (lam / sigma.exp().reshape(-1, 1, 1, 1) * (0.9 * noisy - 0.25) ** 2 + sigma.reshape(-1, 1, 1, 1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    same = edm2_loss(
        FixedDenoiser(), y, None, -0.8, 1.6, torch.Generator().manual_seed(3), exact_target=lambda n, s, c: y
    )
    plain = edm2_loss(FixedDenoiser(), y, None, -0.8, 1.6, torch.Generator().manual_seed(3))
    assert same.item() == pytest.approx(plain.item(), rel=1e-6)


def test_edm_weighting_drops_the_learned_uncertainty():
    """weighting="edm": mean of lambda(sigma) (D - y)^2 (Karras et al. 2022), u(sigma) unused."""
    y = torch.randn(4, 1, 2, 2)
    loss = edm2_loss(FixedDenoiser(), y, None, -0.8, 1.6, torch.Generator().manual_seed(3), weighting="edm")
    g = torch.Generator().manual_seed(3)
    sigma = (torch.randn(4, generator=g) * 1.6 - 0.8).exp().double()
    noise = torch.randn(y.shape, generator=g).double()
    yd = y.double()
    total = sum(
        ((sigma[i] ** 2 + 0.25) / (sigma[i] * 0.5) ** 2 * (0.9 * (yd[i] + noise[i] * sigma[i]) - yd[i]) ** 2)
        .sum()
        .item()
        for i in range(4)
    )
    assert loss.item() == pytest.approx(total / y.numel(), rel=1e-5)
    with pytest.raises(ValueError, match=r"weighting=.none.: expected one of"):
        edm2_loss(FixedDenoiser(), y, None, -0.8, 1.6, weighting="none")


def test_learning_rate_schedule():
    ref = {"ref_lr": 0.01, "ref_batches": 70_000, "batch_size": 2048}
    ramp = 10 * 2**20
    for nimg in [0, 1000, ramp // 2, ramp, 70_000 * 2048, 4 * 70_000 * 2048, 10**11]:
        t_iter = nimg / 2048
        expected = 0.01 / np.sqrt(max(t_iter / 70_000, 1.0)) * min(nimg / ramp, 1.0)
        assert learning_rate(nimg, rampup_img=ramp, **ref) == pytest.approx(expected)
    assert learning_rate(4 * 70_000 * 2048, rampup_img=0, **ref) == pytest.approx(0.005)


def test_edm_sigma_grid():
    s = edm_sigma_steps(32, 0.002, 80, 7).numpy()
    assert len(s) == 33 and s[-1] == 0
    assert s[0] == pytest.approx(80) and s[31] == pytest.approx(0.002)
    i = np.arange(32)
    expected = (80 ** (1 / 7) + i / 31 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="sigma_min"):
        edm_sigma_steps(8, 1.0, 0.5)
