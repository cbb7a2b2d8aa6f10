"""Training-free bad versions of the main model (layer skip, kept dropout) against independent
computations: copies of the network whose blocks are replaced by test-written modules (the
skip path of EDM2's block; a branch times a mask drawn here from the image's seed). Also the
blocks of the MLP and energy nets, the config groups and ``autoguide-generate``."""

import copy

import numpy as np
import pytest
import torch
from test_sample_guidance import SEEDS, TINY, CallLog, N, _hook_count, d, inputs, karras, net, tiny_net  # noqa: F401
from torch import nn

from autoguide.apps.config_tree import compose as compose_config
from autoguide.apps.generate import run as generate
from autoguide.io import save_model
from autoguide.nets import build_network
from autoguide.nets.mp import normalize
from autoguide.sample.guidance import APG, PAG, Dropout, LayerSkip
from autoguide.sample.guidance_spec import GuidanceSettings, build_guidance
from autoguide.sample.guided import GuidedDenoiser
from autoguide.sample.seeds import SeedStreams, stream_seed


def guided(net, terms, labels, x, sigma):
    return GuidedDenoiser(net, terms, labels, SeedStreams(SEEDS))(x, sigma)


class SkipPath(nn.Module):
    """A UNet block without its residual branch: the input, pixel-normalised in the encoder
    (EDM2's block with widths equal and no resampling)."""

    def __init__(self, encoder: bool) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x, emb):
        return normalize(x, dim=1) if self.encoder else x


def without_branches(net, names):
    copy_ = copy.deepcopy(net)
    for name in names:
        part, key = name.split(".")
        getattr(copy_.unet, part)[key] = SkipPath(part == "enc")
    return copy_


def test_unet_blocks_are_listed_in_forward_order(net):
    names = list(net.blocks())
    assert names[0] == "enc.8x8_block0" and names[-1] == "dec.8x8_block1" and "dec.4x4_in0" in names
    order = []
    handles = [b.register_forward_hook(lambda m, a, o, n=n: order.append(n)) for n, b in net.blocks().items()]
    d(net, torch.zeros(1, 3, 8, 8, dtype=torch.float64), 1.0, torch.zeros(1, 4))
    for h in handles:
        h.remove()
    assert order == names


@pytest.mark.parametrize("blocks", [None, ["enc.8x8_block0", "dec.4x4_in1"]])
def test_layer_skip_removes_the_residual_branch(net, inputs, blocks):
    x, labels = inputs
    names = blocks or ["dec.4x4_in0"]  # the default: the bottleneck
    out = guided(net, [LayerSkip(weight=2.5, blocks=blocks)], labels, x, 0.8)
    ref = karras(d(net, x, 0.8, labels), d(without_branches(net, names), x, 0.8, labels), 2.5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


class MaskedBranch(nn.Module):
    """``y * mask / (1 - p)`` with a fixed mask, recording the branch shapes it sees."""

    def __init__(self, mask, p):
        super().__init__()
        self.mask, self.p = mask, p

    def forward(self, y):
        return y * self.mask.to(y.dtype) / (1 - self.p)


def branch_shapes(net, x, labels):
    shapes = {}
    handles = [
        b.branch_point.register_forward_hook(lambda m, a, o, n=n: shapes.update({n: o.shape[1:]}))
        for n, b in net.blocks().items()
    ]
    try:
        d(net, x, 1.0, labels)
    finally:
        for h in handles:
            h.remove()
    return shapes


@pytest.mark.parametrize("blocks", [None, ["dec.4x4_in0"]])
def test_kept_dropout_masks_the_branches_from_each_images_stream(net, inputs, blocks):
    """Masks ``m ~ Bernoulli(1 - p)``: uniform draws ``>= p`` from stream ``dropout:<p>`` of each
    image's seed, block after block in forward order."""
    x, labels = inputs
    p, w = 0.3, 1.8
    out = guided(net, [Dropout(weight=w, p=p, blocks=blocks)], labels, x, 0.6)
    shapes = branch_shapes(net, x, labels)
    names = blocks or list(net.blocks())
    generators = [torch.Generator().manual_seed(stream_seed(s, f"dropout:{p!r}")) for s in SEEDS]
    dropped = copy.deepcopy(net)
    for name in names:
        mask = torch.stack([torch.rand(tuple(shapes[name]), generator=g) >= p for g in generators])
        dropped.blocks()[name].branch_point = MaskedBranch(mask, p)
    ref = karras(d(net, x, 0.6, labels), d(dropped, x, 0.6, labels), w)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # a fresh mask at every evaluation (the stream moves on), the same for the same seeds
    again = GuidedDenoiser(net, [Dropout(weight=w, p=p, blocks=blocks)], labels, SeedStreams(SEEDS))
    first = again(x, 0.6)
    assert torch.equal(first, out) and not torch.allclose(again(x, 0.6), out)


def test_negatives_act_on_their_rows_only_and_leave_the_net_as_it_was(net, inputs):
    """One batched forward ``[pos; skip; dropout]``: the positive rows are the plain network's
    output, and nothing of the hooks or the weights remains."""
    x, labels = inputs
    before = d(net, x, 0.7, labels)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    log = CallLog(net)
    positive = []
    grab = net.register_forward_hook(lambda m, a, o: positive.append(o[:N].to(torch.float64)))
    terms = [LayerSkip(weight=2.0), Dropout(weight=2.0, p=0.2), PAG(weight=1.5)]
    out = guided(net, terms, labels, x, 0.7)
    grab.remove(), log.handle.remove()
    assert log.rows == [4 * N]
    torch.testing.assert_close(positive[0], before, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, before, atol=1e-3)
    assert _hook_count(net) == 0
    assert torch.equal(d(net, x, 0.7, labels), before)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_mlp_and_energy_nets_list_their_blocks():
    torch.manual_seed(0)
    mlp = build_network({"arch": "mlp", "img_channels": 2, "label_dim": 0, "width": 16, "depth": 3}).eval()
    energy = build_network({"arch": "energy_mlp", "img_channels": 2, "label_dim": 0, "width": 16, "depth": 3}).eval()
    for p in [*mlp.parameters(), *energy.parameters()]:
        if p.ndim == 0:
            p.data.fill_(0.8)
    assert list(mlp.blocks()) == ["block0", "block1", "block2"]
    assert list(energy.blocks()) == ["layer1", "layer2", "layer3"]
    x = torch.randn(N, 2, dtype=torch.float64)
    # MLP: a skipped residual block returns its input
    skipped = copy.deepcopy(mlp)
    skipped.backbone.blocks[1].forward = lambda y, emb: y
    out = guided(mlp, [LayerSkip(weight=2.0, blocks=["block1"])], None, x, 0.5)
    torch.testing.assert_close(out, karras(d(mlp, x, 0.5, None), d(skipped, x, 0.5, None), 2.0), rtol=1e-5, atol=1e-5)
    # energy MLP (its denoiser is a gradient): the skipped hidden layer passes its input on
    skipped = copy.deepcopy(energy)
    skipped.blocks()["layer2"].output_point.forward = lambda skip, out: skip
    with torch.enable_grad():
        out = guided(energy, [LayerSkip(weight=2.0, blocks=["layer2"])], None, x, 0.5)
        ref = karras(d(energy, x, 0.5, None), d(skipped, x, 0.5, None), 2.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_block_names_and_rates_are_checked(net, inputs):
    x, labels = inputs
    with pytest.raises(
        ValueError, match=r"layer skip: unknown block\(s\) \['dec.9x9_in0'\]; valid names: enc.8x8_block0"
    ):
        guided(net, [LayerSkip(weight=2.0, blocks=["dec.9x9_in0"])], labels, x, 1.0)
    with pytest.raises(ValueError, match=r"dropout: p must be in \(0, 1\), got 1.0"):
        guided(net, [Dropout(weight=2.0, p=1.0)], labels, x, 1.0)
    with pytest.raises(ValueError, match="dropout draws per-image masks"):
        GuidedDenoiser(net, [Dropout(weight=2.0)], labels)(x, 1.0)


def test_config_groups_build_the_terms_with_their_rules():
    for group, cls in (("layer_skip", LayerSkip), ("dropout", Dropout)):
        cfg = compose_config(
            "generate",
            ["model=m.safetensors", f"guidance={group}", "guidance.apg={eta:0.0,r:2.0}", "guidance.rescale=0.5"],
        )
        (term,) = build_guidance(GuidanceSettings.from_mapping(cfg.guidance), lambda path: None)
        assert isinstance(term, cls) and term.apg == APG(eta=0.0, r=2.0) and term.rule.rescale == 0.5


def generate_variants(tmp_path, variants: dict[str, list[str]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """``autoguide-generate`` of a tiny random UNet once per variant (its overrides), npz output;
    returns the shared overrides and each variant's images."""
    model = tmp_path / "net.safetensors"
    save_model(model, tiny_net(0), {"network": TINY, "nimg": 0, "source": "test"})
    common = [
        f"model={model}",
        "seeds=0-3",
        "sampler.num_steps=3",
        "device=cpu",
        "class_labels=random",
        "progress=false",
        "output.formats=[npz]",
    ]
    images = {}
    for name, extra in variants.items():
        generate(compose_config("generate", [*common, f"output.dir={tmp_path / name}", *extra]))
        with np.load(tmp_path / name / "samples.npz") as data:
            images[name] = data["images"]
    return common, images


def test_generate_cli_with_training_free_negatives(tmp_path):
    _, images = generate_variants(
        tmp_path,
        {
            "plain": ["guidance=none"],
            "skip": ["guidance=layer_skip", "guidance.blocks=[dec.4x4_in0]"],
            "dropout-apg": [
                "guidance=dropout",
                "guidance.p=0.2",
                "guidance.apg={eta:0.0}",
                "guidance.zero_star={zero_steps:1}",
            ],
        },
    )
    assert images["plain"].shape == images["skip"].shape == (4, 8, 8, 3)
    assert (images["plain"] != images["skip"]).any() and (images["plain"] != images["dropout-apg"]).any()


EVERY_RULE = [
    "guidance.fdg={weights:[1.0,0.5],parallel:[1.0,0.0]}",
    "guidance.tcfg={space:flow}",
    "guidance.mambo={alpha:1.0,space:x0}",
    "guidance.schedule={shape:cosine,start:0.5,end:1.0,sigma_start:20,sigma_end:0.01}",
    "guidance.fbg={pi:0.5,temp:0.01,offset:-0.01,max_weight:5}",
    "guidance.apg={eta:0.0,norm_dims:[2,3],momentum:call}",
    "guidance.zero_star={space:eps,zero_steps:1}",
]


def test_generate_cli_takes_every_rule_and_names_a_bad_one(tmp_path):
    """Every new rule and option on CFG and on a layer-skip negative, end to end; a bad value is
    one line naming the key, before sampling (``autoguide-generate`` exits 2 with it)."""
    import subprocess
    import sys

    common, images = generate_variants(
        tmp_path,
        {
            "cfg": ["guidance=cfg", "guidance.weight=3"],
            "cfg-rules": ["guidance=cfg", "guidance.weight=3", *EVERY_RULE],
            "skip-rules": ["guidance=layer_skip", "guidance.weight=2", *EVERY_RULE],
        },
    )
    assert (images["cfg"] != images["cfg-rules"]).any()
    bad_cfg = [*common, f"output.dir={tmp_path / 'bad'}", "guidance=cfg", "guidance.weight=3"]
    for bad, message in [
        ("guidance.fdg={weights:[1.0,-0.5]}", r"cfg: fdg.weights must be >= 0"),
        ("guidance.schedule={shape:step}", r"cfg: schedule.shape must be one of constant, linear, cosine, got 'step'"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(compose_config("generate", [*bad_cfg, bad]))
    result = subprocess.run(
        [sys.executable, "-m", "autoguide.apps.generate", *bad_cfg, "guidance.apg={norm_dims:[4]}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    line = "autoguide-generate: error: cfg: apg.norm_dims=[4] out of range for 4-dim batches"
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert not (tmp_path / "bad" / "samples.npz").exists()
