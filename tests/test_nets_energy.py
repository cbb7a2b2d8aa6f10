"""The energy-parametrised toy denoiser (autoguide.nets.energy): D = x + sigma^2 grad log p."""

import pytest
import torch

from autoguide.apps.config_tree import get_preset
from autoguide.diffusion.loss import edm2_loss
from autoguide.nets import build_network
from autoguide.sample.perturb import NoisyEmbedding

ENERGY = {"arch": "energy_mlp", "img_channels": 2, "label_dim": 2, "width": 16, "depth": 2}


def make_net(gain: float = 0.8, **overrides):
    torch.manual_seed(0)
    net = build_network(ENERGY | overrides)
    with torch.no_grad():
        net.gain.fill_(gain)
    return net.eval()


def inputs(n: int = 6):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64).float()
    sigma = torch.rand(n, generator=generator).float() * 2 + 0.05
    labels = torch.eye(2)[torch.arange(n) % 2]
    return x, sigma, labels


def test_denoiser_is_tweedie_of_the_learned_log_density():
    """D(x) = x + sigma^2 grad log p, the gradient checked by central differences in float64."""
    net = make_net().double()
    x, sigma, labels = (t.double() for t in inputs())
    eps = 1e-5
    grad = torch.zeros_like(x)
    for j in range(2):
        step = torch.zeros_like(x)
        step[:, j] = eps
        grad[:, j] = (net.log_density(x + step, sigma, labels) - net.log_density(x - step, sigma, labels)) / (2 * eps)
    with torch.no_grad():
        denoised = net(x, sigma, labels)
    torch.testing.assert_close(denoised, x + sigma[:, None] ** 2 * grad, atol=1e-7, rtol=1e-6)


def test_zero_gain_is_the_gaussian_denoiser():
    """With g = 0, log p = -|x|^2 / (2 (sigma^2 + sd^2)), so D = sd^2 / (sigma^2 + sd^2) x."""
    net = make_net(gain=0.0)
    x, sigma, labels = inputs()
    with torch.no_grad():
        denoised = net(x, sigma, labels)
    torch.testing.assert_close(denoised, 0.25 / (sigma[:, None] ** 2 + 0.25) * x)


def test_score_field_is_conservative():
    """The score is a gradient, so its Jacobian (the Hessian of log p) is symmetric."""
    net = make_net().double()
    x, sigma, labels = (t.double() for t in inputs(1))

    def score(point):
        return (net(point[None], sigma, labels)[0] - point) / sigma**2

    jacobian = torch.autograd.functional.jacobian(score, x[0])
    torch.testing.assert_close(jacobian, jacobian.T, atol=1e-6, rtol=1e-5)
    assert jacobian.abs().max() > 0


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_sampling_contexts_give_the_same_detached_output(context):
    net = make_net()
    x, sigma, labels = inputs()
    with torch.no_grad():
        expected = net(x, sigma, labels)
    with context():
        got = net(x, sigma, labels)
    assert not got.requires_grad or context is torch.enable_grad
    torch.testing.assert_close(got.detach(), expected)


def test_training_loss_reaches_every_parameter():
    """The loss is differentiated through the score (double backward): every weight, the gain
    and the uncertainty head get a gradient."""
    net = make_net().train()
    x, _, labels = inputs(32)
    loss = edm2_loss(net, x, labels, p_mean=-1.0, p_std=1.0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_labels_condition_and_none_is_the_null_label():
    net = make_net()
    x, sigma, _labels = inputs()
    with torch.no_grad():
        a = net(x, sigma, torch.eye(2)[[0] * 6])
        b = net(x, sigma, torch.eye(2)[[1] * 6])
        null = net(x, sigma, None)
        zeros = net(x, sigma, torch.zeros(6, 2))
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(null, zeros)


def test_logvar_head_and_shapes():
    net = make_net()
    x, sigma, labels = inputs()
    with torch.no_grad():
        denoised, logvar = net(x, sigma, labels, return_logvar=True)
        scalar_sigma = net(x, 0.3, labels)
    assert denoised.shape == (6, 2) and logvar.shape == (6, 1)
    torch.testing.assert_close(scalar_sigma, net(x, torch.full((6,), 0.3), labels).detach())


def test_preset_and_config_checks():
    net = build_network(get_preset("toy-energy"))
    assert net.config["arch"] == "energy_mlp" and len(net.layers) == 5 and net.layers[1].weight.shape == (64, 64)
    assert sum(p.numel() for p in net.parameters()) == 4 * 64 + 4 * 64 * 64 + 1 + 128
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['label_balance'\] for arch='energy_mlp'"):
        build_network(ENERGY | {"label_balance": 0.5})


def test_tsg_refuses_the_energy_net_by_name():
    """TSG perturbs a Fourier noise embedding; the energy net takes ln(sigma)/4 directly."""
    with pytest.raises(ValueError, match=r"emb_fourier, which this network \(EnergyDenoiser\) lacks"):
        NoisyEmbedding(scale=1.0, exponent=1.0).validate(make_net())
