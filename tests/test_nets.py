"""EDM2 network: MP primitives, wiring, preset sizes, preconditioning."""

import math

import pytest
import torch

from autoguide.apps.config_tree import get_preset, group_options
from autoguide.nets import (
    MPConv,
    MPFourier,
    build_network,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    precond_coefficients,
)


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_normalize_gives_unit_rms_per_slice():
    w = torch.randn(8, 5, 3, 3) * torch.arange(1, 9).reshape(8, 1, 1, 1)
    n = normalize(w)
    per_slice = n.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(per_slice, torch.ones(8), atol=1e-3, rtol=0)


def test_mp_silu_keeps_unit_magnitude():
    assert rms(mp_silu(torch.randn(1_000_000))) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5, 0.9])
def test_mp_sum_keeps_unit_magnitude(t):
    a, b = torch.randn(500_000), torch.randn(500_000)
    out = mp_sum(a, b, t)
    assert rms(out) == pytest.approx(1.0, abs=0.01)
    expected = ((1 - t) * a + t * b) / math.sqrt((1 - t) ** 2 + t**2)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("na,nb,t", [(64, 64, 0.5), (32, 96, 0.5), (48, 16, 0.3)])
def test_mp_cat_keeps_unit_magnitude_and_balance(na, nb, t):
    a, b = torch.randn(256, na, 8, 8), torch.randn(256, nb, 8, 8)
    out = mp_cat(a, b, dim=1, t=t)
    assert out.shape[1] == na + nb
    assert rms(out) == pytest.approx(1.0, abs=0.01)
    # share of energy carried by b relative to a follows the balance t
    energy_a = out[:, :na].pow(2).sum() / out.pow(2).sum()
    assert energy_a.item() == pytest.approx((1 - t) ** 2 / ((1 - t) ** 2 + t**2), abs=0.01)


def test_mp_fourier_unit_magnitude_and_formula():
    f = MPFourier(4096)
    x = torch.randn(64)
    y = f(x)
    assert rms(y) == pytest.approx(1.0, abs=0.03)
    expected = math.sqrt(2) * torch.cos(x[:, None] * f.freqs[None] + f.phases[None])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [[], [1, 1], [3, 3]])
def test_mp_conv_unit_magnitude(kernel):
    conv = MPConv(256, 128, kernel)
    x = torch.randn(64, 256) if not kernel else torch.randn(16, 256, 16, 16)
    with torch.no_grad():
        y = conv.eval()(x)
    inner = y if not kernel else y[:, :, 2:-2, 2:-2]
    assert rms(inner) == pytest.approx(1.0, abs=0.05)


def test_forced_weight_normalisation_only_in_training():
    conv = MPConv(16, 8, [3, 3])
    raw = conv.weight.detach().clone()
    conv.eval()(torch.randn(2, 16, 4, 4))
    assert torch.equal(conv.weight, raw)
    conv.train()(torch.randn(2, 16, 4, 4))
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((8,), math.sqrt(16 * 9)), rtol=1e-3, atol=0)


REFERENCE_COUNTS = {
    "img512-xxs": 31_309_029,
    "img512-xs": 124_713_253,
    "img512-s": 280_212_837,
    "img512-m": 497_807_781,
    "img512-l": 777_498_085,
    "img512-xl": 1_119_283_749,
    "img512-xxl": 1_523_164_773,
    "img64-s": 280_209_381,
}


@pytest.mark.parametrize("name,count", sorted(REFERENCE_COUNTS.items()))
def test_preset_parameter_counts_match_edm2(name, count):
    with torch.device("meta"):
        net = build_network(get_preset(name))
    assert sum(p.numel() for p in net.parameters()) == count


def test_every_preset_builds():
    names = group_options("net")
    for expected in ["mnist-xs", "mnist-s", "mnist-m", "toy-mlp", "img64-xs", "img64-xl", "img512-xxl"]:
        assert expected in names
    for name in names:
        with torch.device("meta"):
            build_network(get_preset(name))


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KeyError, match="img512-s"):
        get_preset("img512-huge")


def test_reference_state_dict_names():
    with torch.device("meta"):
        net = build_network(get_preset("img512-xs"))
    keys = set(net.state_dict())
    for key in [
        "unet.enc.64x64_conv.weight",
        "unet.enc.64x64_block0.conv_res0.weight",
        "unet.enc.32x32_down.emb_gain",
        "unet.enc.16x16_block0.attn_qkv.weight",
        "unet.dec.8x8_in0.attn_proj.weight",
        "unet.dec.8x8_in1.conv_res1.weight",
        "unet.dec.64x64_block3.conv_skip.weight",
        "unet.dec.16x16_up.emb_linear.weight",
        "unet.emb_fourier.freqs",
        "unet.emb_fourier.phases",
        "unet.emb_noise.weight",
        "unet.emb_label.weight",
        "unet.out_conv.weight",
        "unet.out_gain",
        "logvar_fourier.freqs",
        "logvar_linear.weight",
    ]:
        assert key in keys, key
    assert "unet.dec.8x8_in1.attn_qkv.weight" not in keys


def test_preconditioning_coefficients_match_edm_table():
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=torch.float64)
    sd = 0.5
    c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, sd)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2))
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2))
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2))
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4)


def tiny_unet(label_dim=10):
    return build_network(
        {
            "arch": "unet",
            "img_resolution": 16,
            "img_channels": 3,
            "label_dim": label_dim,
            "model_channels": 16,
            "channel_mult": [1, 2],
            "num_blocks": 1,
            "attn_resolutions": [8],
            "channels_per_head": 16,
        }
    )


def test_initial_denoiser_is_c_skip_x():
    """out_gain starts at 0, so a fresh network returns c_skip * x."""
    net = tiny_unet().eval()
    x = torch.randn(4, 3, 16, 16)
    sigma = torch.tensor([0.1, 1.0, 5.0, 40.0])
    d = net(x, sigma, torch.eye(10)[:4])
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(d, c_skip.reshape(-1, 1, 1, 1) * x)


def test_unet_forward_shapes_logvar_and_null_label():
    net = tiny_unet()
    with torch.no_grad():  # gains start at 0; open them so labels reach the output
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)
    net.eval()
    x = torch.randn(3, 3, 16, 16)
    d, logvar = net(x, torch.tensor([0.5, 1.0, 2.0]), torch.eye(10)[:3], return_logvar=True)
    assert d.shape == x.shape and logvar.shape == (3, 1, 1, 1)
    null = net(x, 1.0, None)
    zeros = net(x, 1.0, torch.zeros(3, 10))
    torch.testing.assert_close(null, zeros)
    assert not torch.allclose(null, net(x, 1.0, torch.eye(10)[:3]))


def test_attention_ops_named_by_block():
    net = tiny_unet()
    names = set(net.attention_ops())
    assert names == {"enc.8x8_block0", "dec.8x8_in0", "dec.8x8_block0", "dec.8x8_block1"}


def test_attention_op_is_softmax_attention():
    net = tiny_unet()
    op = net.attention_ops()["dec.8x8_in0"]
    q, k, v = (torch.randn(2, 1, 64, 16) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    torch.testing.assert_close(op(q, k, v, (8, 8)), expected, atol=1e-5, rtol=1e-5)


def test_mlp_denoiser_forward():
    net = build_network(get_preset("toy-mlp") | {"label_dim": 2})
    d, logvar = net(torch.randn(5, 2), torch.rand(5) + 0.1, torch.eye(2)[[0, 1, 0, 1, 0]], return_logvar=True)
    assert d.shape == (5, 2) and logvar.shape == (5, 1)


@pytest.mark.parametrize(
    "change,key",
    [
        ({"arch": "resnet"}, "arch"),
        ({"img_resolution": 18}, "img_resolution"),
        ({"bogus": 1}, "bogus"),
        ({"label_dim": -1}, "label_dim"),
    ],
)
def test_bad_network_config_names_key(change, key):
    with pytest.raises(ValueError, match=key):
        build_network(get_preset("mnist-s") | change)


def test_mp_sum_into_equals_mp_sum_of_layer_output():
    from autoguide.nets.unet import mp_sum_into

    layer = MPConv(8, 8, [3, 3])
    x, inp = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    for t in (0.3, 0.5):
        torch.testing.assert_close(mp_sum_into(x, layer, inp, t, gain=1.7), mp_sum(x, layer(inp, gain=1.7), t))


def paper_block(block, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """EDM2's block written out unfused (docs/design.md, "EDM2 network"): mp_silu and mp_sum as
    functions, attention as an explicit softmax; eval mode (no dropout)."""
    from autoguide.nets.unet import resample

    x = resample(x, block.resample_mode)
    if block.flavor == "enc":
        if block.conv_skip is not None:
            x = block.conv_skip(x)
        x = normalize(x, dim=1)
    y = block.conv_res0(mp_silu(x))
    y = mp_silu(y * (block.emb_linear(emb, gain=block.emb_gain) + 1)[:, :, None, None])
    y = block.conv_res1(y)
    if block.flavor == "dec" and block.conv_skip is not None:
        x = block.conv_skip(x)
    x = mp_sum(x, y, block.res_balance)
    if block.num_heads:
        n, c, h, w = x.shape
        q, k, v = normalize(block.attn_qkv(x).reshape(n, block.num_heads, -1, 3, h * w), dim=2).unbind(3)
        weights = torch.softmax(torch.einsum("nhcq,nhck->nhqk", q, k) / q.shape[2] ** 0.5, dim=3)
        attended = torch.einsum("nhqk,nhck->nhcq", weights, v).reshape(n, c, h, w)
        x = mp_sum(x, block.attn_proj(attended), block.attn_balance)
    return x.clip(-block.clip_act, block.clip_act)


@pytest.mark.parametrize(
    ("flavor", "resample_mode", "cin", "cout", "attention"),
    [
        ("enc", "keep", 32, 32, True),
        ("enc", "down", 16, 32, False),
        ("dec", "keep", 48, 32, True),
        ("dec", "up", 32, 32, False),
    ],
)
def test_block_forward_equals_the_paper_form(flavor, resample_mode, cin, cout, attention):
    from autoguide.nets import Block

    torch.manual_seed(0)
    block = Block(cin, cout, 24, flavor, resample_mode, attention=attention, channels_per_head=16).eval()
    with torch.no_grad():
        block.emb_gain.fill_(0.7)
    x, emb = torch.randn(3, cin, 8, 8), torch.randn(3, 24)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), paper_block(block, x, emb), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [[], [3, 3], [1, 1]])
@pytest.mark.parametrize("gain", [1.0, 0.37, "tensor"])
def test_mp_conv_training_forward_and_gradient_equal_the_paper_form(kernel, gain):
    """The fused training forward (one reduction, ``_NormalizedWeight``) against autograd through
    EDM2's form: ``w <- normalize(w)`` in place, then ``normalize(w) * gain / sqrt(fan_in)``."""
    torch.manual_seed(1)
    layer = MPConv(6, 5, kernel).train()
    reference = MPConv(6, 5, kernel).train()
    reference.load_state_dict(layer.state_dict())
    gain_value = torch.tensor(0.8, requires_grad=True) if gain == "tensor" else gain
    gain_ref = torch.tensor(0.8, requires_grad=True) if gain == "tensor" else gain
    x = torch.randn(4, 6, *([5, 5] if kernel else []))

    def paper(conv, g):
        with torch.no_grad():
            conv.weight.copy_(normalize(conv.weight))
        w = normalize(conv.weight) * (g / conv.weight[0].numel() ** 0.5)
        return x @ w.t() if not kernel else torch.nn.functional.conv2d(x, w, padding=kernel[-1] // 2)

    out, expected = layer(x, gain=gain_value), paper(reference, gain_ref)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight, reference.weight, rtol=0, atol=0)  # the forced normalisation
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-6)
    if gain == "tensor":
        torch.testing.assert_close(gain_value.grad, gain_ref.grad, rtol=1e-4, atol=1e-6)
