"""Guidance terms against independent computations of their formulas on a tiny EDM2 UNet.

The independent path never uses the sampler's hooks: perturbed negatives are built by
swapping modules of a deep copy of the network for test-written ones (identity attention,
numpy-blurred queries, an embedding that adds known noise)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import TINY_RGB_UNET
from torch import nn

from autoguide.nets import build_network
from autoguide.sample.guidance import CFG, ICG, PAG, SAG, SEG, TSG, Autoguidance, SIMSNegative
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.seeds import SeedStreams, stream_seed

TINY = {**TINY_RGB_UNET, "attn_resolutions": [8, 4]}  # attention at both levels
SEEDS = [3, 17, 40]
N = len(SEEDS)


def tiny_net(seed: int, label_dim: int = 4) -> nn.Module:
    """A tiny UNet whose zero-initialised gains are set non-zero so every input matters."""
    torch.manual_seed(seed)
    net = build_network({**TINY, "label_dim": label_dim}).eval().requires_grad_(False)
    for p in net.parameters():
        if p.ndim == 0:
            p.fill_(0.8)
    return net


@pytest.fixture(scope="module")
def net():
    return tiny_net(0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, 8, 8, generator=g, dtype=torch.float64) * 2.0
    labels = F.one_hot(torch.tensor([0, 2, 3]), 4).float()
    return x, labels


def guided(net, terms, labels, x, sigma, seeds=SEEDS):
    return GuidedDenoiser(net, terms, labels, SeedStreams(seeds))(x, sigma)


def karras(d_pos, d_neg, w):
    return d_neg + w * (d_pos - d_neg)


def d(net, x, sigma, labels):
    return net(x, torch.full((len(x),), sigma), labels).to(torch.float64)


class IdentityOp(nn.Module):
    def forward(self, q, k, v, grid_hw):
        return v


def numpy_blur(grid: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian over the last two axes: np.pad(reflect) and an explicit correlation."""
    if math.isinf(sigma):
        return np.broadcast_to(grid.mean(axis=(-2, -1), keepdims=True), grid.shape).copy()
    size = math.ceil(6 * sigma)
    size = size + 1 - size % 2
    r = (size - 1) // 2
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (-1, -2):
        pad = [(0, 0)] * grid.ndim
        pad[axis] = (r, r)
        padded = np.pad(grid, pad, mode="reflect")
        n = grid.shape[axis]
        grid = sum(taps[j] * np.take(padded, np.arange(j, j + n), axis=axis) for j in range(size))
    return grid


class BlurredQueryOp(nn.Module):
    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma

    def forward(self, q, k, v, grid_hw):
        n, heads, tokens, ch = q.shape
        grid = q.double().numpy().transpose(0, 1, 3, 2).reshape(n, heads, ch, *grid_hw)
        qb = torch.from_numpy(numpy_blur(grid, self.sigma).reshape(n, heads, ch, tokens).transpose(0, 1, 3, 2))
        attn = torch.softmax(qb.to(q.dtype) @ k.transpose(-1, -2) / math.sqrt(ch), dim=-1)
        return attn @ v


class NoisyFourier(nn.Module):
    def __init__(self, inner, added):
        super().__init__()
        self.inner, self.added = inner, added

    def forward(self, c):
        return self.inner(c) + self.added


def swapped(net, block, op):
    copy_ = copy.deepcopy(net)
    part, name = block.split(".")
    getattr(copy_.unet, part)[name].attn_op = op
    return copy_


SIGMAS = [0.3, 2.5]


def test_cfg_single_class_model_with_separate_unconditional_model(inputs):
    """The paper's toy CFG: a label-free model of one class against an unconditional model."""
    x, _ = inputs
    single_class, uncond = tiny_net(6, label_dim=0), tiny_net(5, label_dim=0)
    out = guided(single_class, [CFG(weight=1.7, unconditional=uncond)], None, x, 1.0)
    ref = karras(d(single_class, x, 1.0, None), d(uncond, x, 1.0, None), 1.7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cfg needs a class-conditional model"):
        GuidedDenoiser(single_class, [CFG(weight=1.7)], None)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cfg_null_label(net, inputs, sigma):
    x, labels = inputs
    out = guided(net, [CFG(weight=2.5)], labels, x, sigma)
    ref = karras(d(net, x, sigma, labels), d(net, x, sigma, torch.zeros_like(labels)), 2.5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_cfg_separate_unconditional_model(net, inputs):
    x, labels = inputs
    uncond = tiny_net(5, label_dim=0)
    out = guided(net, [CFG(weight=1.7, unconditional=uncond)], labels, x, 1.0)
    ref = karras(d(net, x, 1.0, labels), d(uncond, x, 1.0, None), 1.7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_autoguidance_and_sims(net, inputs, sigma):
    x, labels = inputs
    guide = tiny_net(7)
    ref = karras(d(net, x, sigma, labels), d(guide, x, sigma, labels), 2.2)
    torch.testing.assert_close(
        guided(net, [Autoguidance(guide=guide, weight=2.2)], labels, x, sigma), ref, rtol=1e-5, atol=1e-5
    )
    # SIMS: s = (1 + omega) s_base - omega s_synthetic, i.e. w = 1 + omega
    sims = guided(net, [SIMSNegative(guide=guide, omega=1.2)], labels, x, sigma)
    torch.testing.assert_close(sims, ref, rtol=1e-5, atol=1e-5)


def test_icg_uses_one_random_class_per_image(net, inputs):
    x, labels = inputs
    seeds = list(range(12))
    xs, ls = x.repeat(4, 1, 1, 1), labels.repeat(4, 1)
    out = guided(net, [ICG(weight=2.0)], ls, xs, 1.5, seeds)
    d_pos = d(net, xs, 1.5, ls)
    # brute force: which class makes the formula hold for each image?
    candidates = torch.stack(
        [karras(d_pos, d(net, xs, 1.5, F.one_hot(torch.full((12,), c), 4).float()), 2.0) for c in range(4)]
    )
    errors = (candidates - out).flatten(2).abs().amax(-1)  # [class, image]
    assert (errors.min(0).values < 1e-5).all()
    classes = errors.argmin(0)
    assert len(set(classes.tolist())) > 1  # random, not a constant class
    # the class is a function of the seed: image 5 alone gives the same result
    alone = guided(net, [ICG(weight=2.0)], ls[5:6], xs[5:6], 1.5, [5])
    torch.testing.assert_close(alone, out[5:6], rtol=1e-5, atol=1e-5)


def test_tsg_perturbs_the_noise_embedding(net, inputs):
    x, labels = inputs
    sigma, scale, exponent = 1.3, 0.7, 2.0
    out = guided(net, [TSG(weight=1.8, scale=scale, exponent=exponent)], labels, x, sigma)
    # independent: alpha = scale * (sigma / sqrt(sigma^2 + sd^2))^exponent times the images' stream noise
    alpha = scale * (sigma / math.sqrt(sigma**2 + 0.25)) ** exponent
    width = net.unet.emb_fourier.freqs.numel()
    noise = torch.stack(
        [
            torch.randn(width, generator=torch.Generator().manual_seed(stream_seed(s, f"tsg:{scale!r}:{exponent!r}")))
            for s in SEEDS
        ]
    )
    perturbed = copy.deepcopy(net)
    perturbed.unet.emb_fourier = NoisyFourier(net.unet.emb_fourier, alpha * noise)
    ref = karras(d(net, x, sigma, labels), d(perturbed, x, sigma, labels), 1.8)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, d(net, x, sigma, labels), atol=1e-3)


@pytest.mark.parametrize("blocks", [None, ["enc.8x8_block0", "dec.8x8_block1"]])
def test_pag_identity_attention(net, inputs, blocks):
    x, labels = inputs
    out = guided(net, [PAG(weight=3.0, blocks=blocks)], labels, x, 0.8)
    perturbed = copy.deepcopy(net)
    for block in blocks or ["dec.4x4_in0"]:  # default: the bottleneck
        perturbed = swapped(perturbed, block, IdentityOp())
    ref = karras(d(net, x, 0.8, labels), d(perturbed, x, 0.8, labels), 3.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blur_sigma", [0.7, 3.0, math.inf])
def test_seg_blurred_queries(net, inputs, blur_sigma):
    x, labels = inputs
    block = "dec.8x8_block0"
    out = guided(net, [SEG(weight=2.0, blur_sigma=blur_sigma, blocks=[block])], labels, x, 0.8)
    ref = karras(d(net, x, 0.8, labels), d(swapped(net, block, BlurredQueryOp(blur_sigma)), x, 0.8, labels), 2.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


class RecordingOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.maps = []

    def forward(self, q, k, v, grid_hw):
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        self.maps.append((attn, grid_hw))
        return attn @ v


def test_sag_degraded_input(net, inputs):
    x, labels = inputs
    sigma, w = 1.1, 1.6
    out = guided(net, [SAG(weight=w, blur_sigma=1.0, threshold=1.0)], labels, x, sigma)
    recorder = RecordingOp()
    d_pos = d(swapped(net, "dec.4x4_in0", recorder), x, sigma, labels)
    attn, (h, wd) = recorder.maps[0]
    received = attn.mean(1).sum(1).reshape(N, 1, h, wd)  # attention each key token gets
    mask = (received > 1.0).double().repeat_interleave(8 // h, 2).repeat_interleave(8 // wd, 3)
    assert 0 < mask.mean() < 1
    x0_blur = torch.from_numpy(numpy_blur(d_pos.numpy(), 1.0))
    x0_deg = mask * x0_blur + (1 - mask) * d_pos
    x_deg = x0_deg + (x - d_pos)  # re-noise with the predicted noise
    eps_neg = (x_deg - d(net, x_deg, sigma, labels)) / sigma
    eps_pos = (x - d_pos) / sigma
    eps = eps_pos + (w - 1) * (eps_pos - eps_neg)  # SAG in noise-prediction form
    torch.testing.assert_close(out, x - sigma * eps, rtol=1e-5, atol=1e-5)


def test_combination_of_two_terms(net, inputs):
    x, labels = inputs
    guide = tiny_net(7)
    out = guided(net, [Autoguidance(guide=guide, weight=2.0), CFG(weight=1.3)], labels, x, 0.9)
    d_pos = d(net, x, 0.9, labels)
    ref = d_pos + 1.0 * (d_pos - d(guide, x, 0.9, labels)) + 0.3 * (d_pos - d(net, x, 0.9, torch.zeros_like(labels)))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_weight_one_and_interval_give_the_positive_exactly(net, inputs):
    x, labels = inputs
    guide = tiny_net(7)
    plain = d(net, x, 0.9, labels)
    for terms in ([Autoguidance(guide=guide, weight=1.0), PAG(weight=1.0)], [CFG(weight=3.0, interval=(1.0, 5.0))]):
        assert torch.equal(guided(net, terms, labels, x, 0.9), plain)
    # inside (lo, hi] it is on; the interval is open at lo and closed at hi
    term = CFG(weight=3.0, interval=(0.5, 0.9))
    assert term.is_active(0.9) and not term.is_active(0.5) and not term.is_active(0.95)
    assert not torch.equal(guided(net, [term], labels, x, 0.9), plain)


class CallLog:
    """Records the batch size of every forward of a module."""

    def __init__(self, module):
        self.rows = []
        self.handle = module.register_forward_pre_hook(lambda m, args: self.rows.append(args[0].shape[0]))


def test_shared_terms_ride_in_one_batched_forward(net, inputs):
    x, labels = inputs
    guide = tiny_net(7)
    log_net, log_guide = CallLog(net), CallLog(guide)
    terms = [
        CFG(weight=1.5),
        CFG(weight=1.2, interval=(0.1, 10.0)),  # same negative twice: evaluated once
        ICG(weight=1.4),
        TSG(weight=1.3),
        PAG(weight=2.0),
        SEG(weight=2.0, blur_sigma=2.0),
        Autoguidance(guide=guide, weight=2.0),
    ]
    guided(net, terms, labels, x, 0.9)
    log_net.handle.remove(), log_guide.handle.remove()
    assert log_net.rows == [6 * N]  # positive + null + random class + TSG + PAG + SEG
    assert log_guide.rows == [N]  # autoguidance costs the guide's forward only


def _hook_count(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_perturbation_hooks_are_removed(net, inputs):
    x, labels = inputs
    before = d(net, x, 0.7, labels)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    terms = [PAG(weight=2.0), SEG(weight=2.0, blur_sigma=1.0), TSG(weight=2.0), SAG(weight=1.5)]
    assert not torch.equal(guided(net, terms, labels, x, 0.7), before)
    assert _hook_count(net) == 0
    assert torch.equal(d(net, x, 0.7, labels), before)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())

    # also when the forward fails half-way
    def boom(module, args):
        raise RuntimeError("boom")

    handle = net.unet.out_conv.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        guided(net, terms, labels, x, 0.7)
    handle.remove()
    assert _hook_count(net) == 0
    assert torch.equal(d(net, x, 0.7, labels), before)


def test_wrong_block_name_lists_valid_names(net, inputs):
    x, labels = inputs
    with pytest.raises(ValueError, match=r"dec\.16x16_block1.*valid names: enc\.8x8_block0, .*dec\.4x4_in0"):
        guided(net, [PAG(weight=2.0, blocks=["dec.16x16_block1"])], labels, x, 1.0)
    mlp = build_network({"arch": "mlp", "img_channels": 2, "label_dim": 0})
    with pytest.raises(ValueError, match="no attention ops"):
        GuidedDenoiser(mlp, [SEG(weight=2.0)])


def test_terms_that_need_labels_refuse_unconditional_use(net, inputs):
    _x, _ = inputs
    for term in (CFG(weight=2.0), ICG(weight=2.0)):
        with pytest.raises(ValueError, match="class-conditional"):
            GuidedDenoiser(net, [term], None)
    with pytest.raises(ValueError, match="label_dim"):
        GuidedDenoiser(net, [Autoguidance(guide=tiny_net(1, label_dim=0), weight=2.0)], torch.eye(4)[:3])
    with pytest.raises(ValueError, match="interval"):
        CFG(weight=2.0, interval=(1.0, 0.5))


def test_bf16_precision_is_close_to_fp32(net, inputs):
    x, labels = inputs
    fp32 = GuidedDenoiser(net, [CFG(weight=2.0)], labels)(x, 1.0)
    bf16 = GuidedDenoiser(net, [CFG(weight=2.0)], labels, precision="bf16")(x, 1.0)
    assert not torch.equal(fp32, bf16)
    assert (fp32 - bf16).abs().max() < 0.1 * fp32.abs().max()


def test_unconditional_model_with_shared_terms(inputs):
    x, _ = inputs
    uncond = tiny_net(9, label_dim=0)
    out = guided(uncond, [PAG(weight=2.0), TSG(weight=1.5, scale=0.5)], None, x, 1.2)
    d_pos, d_pag = d(uncond, x, 1.2, None), d(swapped(uncond, "dec.4x4_in0", IdentityOp()), x, 1.2, None)
    alpha = 0.5 * (1.2 / math.sqrt(1.2**2 + 0.25))
    noise = torch.stack(
        [torch.randn(16, generator=torch.Generator().manual_seed(stream_seed(s, "tsg:0.5:1.0"))) for s in SEEDS]
    )
    tsg = copy.deepcopy(uncond)
    tsg.unet.emb_fourier = NoisyFourier(uncond.unet.emb_fourier, alpha * noise)
    ref = d_pos + 1.0 * (d_pos - d_pag) + 0.5 * (d_pos - d(tsg, x, 1.2, None))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
