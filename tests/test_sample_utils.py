"""Seeds and random streams, the Gaussian blur, label policies, rank splitting and the
guidance config parser."""

import math

import numpy as np
import pytest
import torch

from autoguide.runtime.process import RankInfo, rank_from_env, rank_slice
from autoguide.sample.blur import gaussian_blur_2d, gaussian_kernel, gaussian_kernel_size, reflect_indices
from autoguide.sample.guidance import CFG, PAG, SEG, Autoguidance, SIMSNegative
from autoguide.sample.guidance_spec import GuidanceSettings, build_guidance, term_keys
from autoguide.sample.labels import as_one_hot, class_labels
from autoguide.sample.seeds import SeedStreams, parse_seeds, seed_noise


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,4,10-12") == [1, 4, 10, 11, 12]
    assert parse_seeds(7) == [7]
    assert parse_seeds([3, "5-6"]) == [3, 5, 6]
    for bad, message in [
        ("5-2", "cannot parse"),
        ("a", "cannot parse"),
        ("-3", ">= 0"),
        ("1,2,1", "repeats"),
        ([], "no seed"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_seeds(bad)


def test_streams_are_per_image_and_independent():
    streams = SeedStreams([4, 9])
    a, b = streams.randn("churn", [3]), streams.randn("churn", [3])
    assert not torch.equal(a, b)  # a stream advances
    alone = SeedStreams([9])
    torch.testing.assert_close(alone.randn("churn", [3])[0], a[1], rtol=0, atol=0)
    torch.testing.assert_close(alone.randn("churn", [3])[0], b[1], rtol=0, atol=0)
    # different stream names and the initial noise never coincide
    other = SeedStreams([4]).randn("tsg", [3])[0]
    assert not torch.allclose(other, a[0]) and not torch.allclose(seed_noise([4], [3])[0], a[0])
    classes = SeedStreams(range(200)).randint("icg", 5)
    assert set(classes.tolist()) == set(range(5))


@pytest.mark.parametrize("sigma, size", [(0.1, 1), (0.5, 3), (1.0, 7), (1.2, 9), (10.0, 61)])
def test_kernel_size_formula(sigma, size):
    # ceil(6 sigma) + 1 - ceil(6 sigma) % 2: the odd size covering +-3 sigma
    assert gaussian_kernel_size(sigma) == size
    taps = gaussian_kernel(sigma, torch.float64)
    assert len(taps) == size and taps.sum().item() == pytest.approx(1.0)
    assert torch.equal(taps, taps.flip(0))


@pytest.mark.parametrize("n, pad", [(4, 1), (4, 3), (4, 9), (1, 2), (5, 30)])
def test_reflect_indices_match_numpy(n, pad):
    expected = np.pad(np.arange(n), pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, dtype=int)
    assert reflect_indices(n, pad).tolist() == expected.tolist()


def test_blur_against_direct_2d_convolution():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    sigma = 0.8
    r = (gaussian_kernel_size(sigma) - 1) // 2
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    padded = np.pad(x.numpy(), [(0, 0), (0, 0), (r, r), (r, r)], mode="reflect")
    expected = np.zeros_like(x.numpy())
    for i in range(5):
        for j in range(6):
            expected[..., i, j] = (padded[..., i : i + 2 * r + 1, j : j + 2 * r + 1] * kernel).sum((-2, -1))
    np.testing.assert_allclose(gaussian_blur_2d(x, sigma).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(gaussian_blur_2d(x, 0.0), x)
    torch.testing.assert_close(gaussian_blur_2d(x, math.inf), x.mean((-2, -1), keepdim=True).expand_as(x))
    # a very large sigma flattens the grid (with reflect padding towards a mean that weights the
    # border half; SEG defines sigma = inf as the plain mean)
    assert gaussian_blur_2d(x, 1e4).flatten(2).std(-1).max() < 1e-3
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur_2d(x, -1.0)


def test_label_policies():
    seeds = [3, 8, 11]
    assert class_labels(2, seeds, 5) == (seeds, [2, 2, 2])
    assert class_labels([1, 4], seeds, 5) == (seeds, [1, 4, 1])
    assert class_labels("all", [3, 8], 3) == ([3, 8, 3, 8, 3, 8], [0, 0, 1, 1, 2, 2])
    s, c = class_labels("random", seeds, 5)
    assert s == seeds and class_labels("random", [8], 5)[1] == [c[1]]  # per seed, not per position
    assert class_labels("random", seeds, 0) == (seeds, None)
    for policy, dim in [(7, 5), ("none", 5), (2, 0), ("sometimes", 5)]:
        with pytest.raises(ValueError, match="class_labels"):
            class_labels(policy, seeds, dim)
    torch.testing.assert_close(as_one_hot([1, 0], 3, 2), torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        as_one_hot(torch.zeros(2, 4), 3, 2)


def test_rank_from_env_and_slices():
    assert rank_from_env({}) == RankInfo(0, 1, 0)
    assert rank_from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == RankInfo(2, 4, 0)
    srun_step = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}
    assert rank_from_env(srun_step) == RankInfo(5, 8, 1)
    # a batch script (no job step) is one process whatever --ntasks says
    assert rank_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}) == RankInfo(0, 1, 0)
    # Lightning's one-node launcher gives ranks 1.. only LOCAL_RANK and WORLD_SIZE
    assert rank_from_env({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == RankInfo(1, 2, 1)
    with pytest.raises(ValueError, match="outside"):
        rank_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    parts = [list(range(10))[rank_slice(10, RankInfo(r, 3))] for r in range(3)]
    assert [i for part in parts for i in part] == list(range(10)) and {len(p) for p in parts} == {3, 4}
    assert RankInfo(0, 1).suffix == "" and RankInfo(3, 8).suffix == "-rank003"


def test_guidance_from_config():
    loaded = []

    def load(path):
        loaded.append(path)
        return torch.nn.Identity()

    def build(mapping):
        return build_guidance(GuidanceSettings.from_mapping(mapping), load)

    assert build({"kind": "none"}) == []
    assert build({"kind": "autoguidance", "weight": 1.0, "model": None}) == []  # w = 1: nothing to load
    terms = build(
        {
            "terms": [
                {"kind": "autoguidance", "weight": 2.2, "interval": [0.1, 5.0], "model": "g.safetensors"},
                {"kind": "cfg", "weight": 1.3, "model": None},
                {"kind": "pag", "weight": 3.0, "blocks": ["dec.8x8_in0"]},
                {"kind": "seg", "weight": 2.0, "blur_sigma": float("inf"), "blocks": None},
                {"kind": "sims", "omega": 0.5, "model": "s.safetensors"},
            ]
        }
    )
    assert loaded == ["g.safetensors", "s.safetensors"]
    ag, cfg, pag, seg, sims = terms
    assert isinstance(ag, Autoguidance) and ag.weight == 2.2 and ag.interval == (0.1, 5.0)
    assert isinstance(cfg, CFG) and cfg.unconditional is None
    assert isinstance(pag, PAG) and pag.negative().perturbation.blocks == ("dec.8x8_in0",)
    assert isinstance(seg, SEG) and math.isinf(seg.blur_sigma)
    assert isinstance(sims, SIMSNegative) and sims.weight == 1.5
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['scale'\].*valid keys"):
        build({"kind": "pag", "weight": 2.0, "scale": 1.0})
    with pytest.raises(ValueError, match="kind='foo'"):
        build({"kind": "foo"})
    with pytest.raises(ValueError, match="needs a model file"):
        build({"kind": "autoguidance", "weight": 2.0, "model": None})
    assert term_keys("sims") == [
        "kind",
        "interval",
        "apg",
        "zero_star",
        "rescale",
        "cap",
        "tcfg",
        "fdg",
        "schedule",
        "fbg",
        "mambo",
        "omega",
        "model",
    ]
