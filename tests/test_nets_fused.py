"""The fused kernels (``nets.fused``) against the paper's form of the same layers: equal outputs
and equal gradients (parameters and input), in float64 so that rounding stays far below the
tolerance, in training mode so that forced weight normalisation runs too."""

import copy

import pytest
import torch

from autoguide.nets import MPConv, set_fused
from autoguide.nets.mlp import MLP
from autoguide.nets.unet import Block, UNet

RTOL = 1e-6
ATOL = 1e-12


def fused_and_paper(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two float64 copies of ``module`` in training mode: the fused one and the paper-form one."""
    fused = set_fused(copy.deepcopy(module).double().train(), True)
    paper = set_fused(copy.deepcopy(module).double().train(), False)
    return fused, paper


def outputs_and_gradients(module: torch.nn.Module, inputs: list[torch.Tensor], upstream_seed: int = 7):
    """``module(*inputs)``, then the gradients of ``<output, u>`` (a fixed random ``u``) with
    respect to every parameter (by name) and every input."""
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    out = module(*inputs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=out.dtype)
    (out * upstream).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    return out, grads, [t.grad for t in inputs], {n: p.detach() for n, p in module.named_parameters()}


def assert_equal_forms(module: torch.nn.Module, inputs: list[torch.Tensor]) -> None:
    fused, paper = fused_and_paper(module)
    out_f, grads_f, input_grads_f, params_f = outputs_and_gradients(fused, inputs)
    out_p, grads_p, input_grads_p, params_p = outputs_and_gradients(paper, inputs)
    torch.testing.assert_close(out_f, out_p, rtol=RTOL, atol=ATOL)
    assert grads_f.keys() == grads_p.keys() and grads_f, "no parameter got a gradient"
    for name in grads_p:
        torch.testing.assert_close(
            grads_f[name], grads_p[name], rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )
    for g_f, g_p in zip(input_grads_f, input_grads_p, strict=True):
        torch.testing.assert_close(g_f, g_p, rtol=RTOL, atol=ATOL)
    for name in params_p:  # forced weight normalisation wrote the same weights
        torch.testing.assert_close(params_f[name], params_p[name], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("flavor", "resample_mode", "cin", "cout", "attention"),
    [
        ("enc", "keep", 16, 16, False),  # encoder block
        ("enc", "keep", 16, 16, True),  # encoder block with attention
        ("enc", "keep", 8, 16, False),  # first block of a wider level: conv_skip
        ("enc", "keep", 8, 16, True),
        ("enc", "down", 16, 16, False),  # downsampling block
        ("dec", "keep", 16, 16, True),  # decoder in0
        ("dec", "keep", 16, 16, False),  # decoder in1
        ("dec", "up", 16, 16, False),  # upsampling block
        ("dec", "keep", 24, 16, False),  # decoder block after mp_cat: conv_skip
        ("dec", "keep", 24, 16, True),
    ],
)
def test_fused_block_equals_the_paper_block(flavor, resample_mode, cin, cout, attention):
    torch.manual_seed(0)
    block = Block(cin, cout, 12, flavor, resample_mode, attention=attention, channels_per_head=8)
    with torch.no_grad():
        block.emb_gain.fill_(0.7)
    x = torch.randn(3, cin, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert_equal_forms(block, [x, torch.randn(3, 12, dtype=torch.float64)])


class GainedConv(torch.nn.Module):
    """``MPConv`` with a learned tensor gain (as ``emb_linear`` and ``out_conv`` use it)."""

    def __init__(self, kernel: list[int]) -> None:
        super().__init__()
        self.conv = MPConv(6, 5, kernel)
        self.gain = torch.nn.Parameter(torch.tensor(0.8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, gain=self.gain)


@pytest.mark.parametrize("kernel", [[], [1, 1], [3, 3]])
def test_fused_mp_conv_equals_the_paper_mp_conv(kernel):
    torch.manual_seed(1)
    assert_equal_forms(GainedConv(kernel), [torch.randn(4, 6, *([5, 5] if kernel else []), dtype=torch.float64)])


def test_fused_unet_equals_the_paper_unet():
    """The whole UNet: every block type of both halves, mp_cat of the skips, the embedding."""
    torch.manual_seed(2)
    net = UNet(
        16, 1, 3, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), channels_per_head=8
    )
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.5)  # the zero-initialised gains, so that every layer contributes
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[:2]
    assert_equal_forms(net, [x, torch.tensor([-0.5, 1.2], dtype=torch.float64), labels])


def test_fused_mlp_equals_the_paper_mlp():
    torch.manual_seed(3)
    mlp = MLP(dim=2, label_dim=3, width=16, depth=2)
    with torch.no_grad():
        mlp.out_gain.fill_(0.5)
        for block in mlp.blocks:
            block.emb_gain.fill_(0.5)
    inputs = [torch.randn(5, 2), torch.randn(5), torch.eye(3)[[0, 1, 2, 0, 1]]]
    assert_equal_forms(mlp, [t.double() for t in inputs])


def test_the_paper_form_runs_no_fused_kernel(monkeypatch):
    import autoguide.nets.fused as fused

    block = set_fused(Block(8, 16, 12, "dec", attention=True, channels_per_head=8).train(), False)
    monkeypatch.setattr(fused.NormalizedWeight, "apply", lambda *a: pytest.fail("fused weight in the paper form"))
    monkeypatch.setattr("autoguide.nets.unet.block_forward", lambda *a: pytest.fail("fused block in the paper form"))
    block(torch.randn(2, 8, 4, 4), torch.randn(2, 12)).sum().backward()
    assert all(p.grad is not None for p in block.parameters())
