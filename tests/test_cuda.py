"""CUDA checks (``pytest -m cuda``; skipped without a CUDA device, run by
``benchmarks/device_check.sh``): a bf16 training step, compiled training on CUDA, DDP with one
GPU, the sampler in bf16 against fp32 on the same seeds, and guidance hooks under compilation."""

from __future__ import annotations

import pytest
import torch

from autoguide.apps.config_tree import compose, get_preset
from autoguide.diffusion import edm2_loss
from autoguide.nets import build_network
from autoguide.sample import PAG, SEG, TSG, Dropout, LayerSkip, generate_images
from autoguide.train.gradients import FlatGradients
from autoguide.train.run import train
from autoguide.train.run_config import read_train_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DEVICE = torch.device("cuda")
TINY = {
    "arch": "unet",
    "img_resolution": 16,
    "img_channels": 3,
    "label_dim": 4,
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_resolutions": [8],
    "channels_per_head": 16,
}


def batch(net: torch.nn.Module, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(n, net.img_channels, net.img_resolution, net.img_resolution, device=DEVICE) * 2 - 1
    return images, torch.nn.functional.one_hot(torch.arange(n, device=DEVICE) % net.label_dim, net.label_dim).float()


def losses(net: torch.nn.Module, steps: int, precision: str = "fp32") -> list[float]:
    images, labels = batch(net)
    gradients = FlatGradients(net.parameters())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8, fused=True)
    out = []
    for step in range(steps):
        torch.manual_seed(step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = edm2_loss(net, images, labels, -0.4, 1.0)
        gradients.zero_()
        loss.backward()
        gradients.clean_()
        optimizer.step()
        out.append(float(loss))
    return out


def test_bf16_training_step_keeps_float32_state():
    torch.manual_seed(0)
    net = build_network(get_preset("img512-xs")).to(DEVICE).train()
    values = losses(net, 2, "bf16")
    assert all(torch.isfinite(torch.tensor(values)))
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_compiled_training_on_cuda_matches_eager():
    torch.manual_seed(0)
    eager = build_network(TINY).to(DEVICE).train()
    compiled = build_network(TINY).to(DEVICE).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    a, b = losses(eager, 5), losses(compiled, 5)
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-3 * abs(x), (a, b)
    assert eager.state_dict().keys() == compiled.state_dict().keys()


def test_ddp_with_one_gpu(tmp_path):
    cfg = compose(
        "train",
        [
            "debug=fast",
            "net=mnist-xs",
            f"run_dir={tmp_path / 'run'}",
            "trainer=ddp",
            "trainer.devices=1",
            "train.batch_size=16",
            "callbacks.sample_grid.num_steps=2",
        ],
    )
    final = train(read_train_config(cfg))
    assert final.is_file()


def sampling_net() -> torch.nn.Module:
    """The tiny UNet on the GPU for sampling, its zero-initialised gains set so every input matters."""
    torch.manual_seed(0)
    net = build_network(TINY).to(DEVICE).eval().requires_grad_(False)
    for p in net.parameters():
        if p.ndim == 0:
            p.data.fill_(0.8)
    return net


def test_sampler_bf16_is_close_to_fp32_on_the_same_seeds():
    net = sampling_net()
    seeds, labels = list(range(16)), [i % 4 for i in range(16)]
    fp32 = generate_images(net, seeds, labels, device=DEVICE, num_steps=8)
    bf16 = generate_images(net, seeds, labels, device=DEVICE, num_steps=8, precision="bf16")
    assert (fp32 - bf16).abs().mean() < 0.05 and not torch.equal(fp32, bf16)


def test_guidance_hooks_under_compile_on_cuda():
    net = sampling_net()
    seeds, labels = list(range(8)), [i % 4 for i in range(8)]
    terms_list = (
        [PAG(weight=2.0)],
        [SEG(weight=2.0)],
        [TSG(weight=1.5)],
        [LayerSkip(weight=2.0)],
        [Dropout(weight=2.0, p=0.2)],
    )
    for terms in terms_list:
        eager = generate_images(net, seeds, labels, terms, device=DEVICE, num_steps=3)
        compiled = generate_images(net, seeds, labels, terms, device=DEVICE, num_steps=3, compile=True)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=2e-3)
