"""Training precision and compilation on the CPU: bf16-mixed keeps weights, optimizer state and
EMAs in float32, starts with float32's losses and ends within a stated distance of them; a compiled run gives the
same losses as an eager one and their checkpoints resume in each other; compiled sampling keeps
the guidance hooks (PAG, SEG, TSG) and refuses SAG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from tiny import TINY_RGB_UNET

from autoguide.apps.config_tree import compose
from autoguide.io import read_model_file
from autoguide.nets import build_network, is_compiled
from autoguide.sample import APG, PAG, SAG, SEG, TSG, Dropout, LayerSkip, generate_images
from autoguide.train.checkpoint import list_checkpoints
from autoguide.train.run import train
from autoguide.train.run_config import read_train_config

BF16_EARLY_TOLERANCE = 0.01
"""bf16-mixed vs float32 from the same seed, mean loss of the first third of the steps: relative
difference. Both runs see the same batches and noise, so while their weights are still close only
the arithmetic differs (300 steps of batch 8: the first 100 steps' means agree within 0.03%)."""

BF16_TAIL_TOLERANCE = 0.04
"""The same, mean loss of the last third of the steps: absolute difference. The EDM2 loss with
learned uncertainty, ``lambda / exp(u) * (D - y)^2 + u``, is about ``1 + ln(weighted error)`` once
``u`` fits, so it falls through zero as training goes on (near step 250 here) and a relative
difference means nothing there; an absolute difference ``d`` is a factor ``exp(d)`` on the
weighted error. Two runs whose rounding differs drift apart after about 200 steps like any two
trainings: measured at 300 steps, the last 100 steps' means are 0.0612 (float32) and 0.0517
(bf16), their 25-step windows differ by -0.046 to +0.038 with changing sign, and the standard
error of the 100-step mean difference is 0.005. A defect (updates lost to bf16 master weights,
a stalled or diverged run) moves the loss by tenths."""


def run(run_dir: Path, steps: int, *extra: str, batch: int = 16) -> list[float]:
    """Train (or continue to) ``steps`` steps of the MNIST recipe with the XS network; the loss of
    every step of this start."""
    cfg = compose(
        "train",
        [
            "debug=fast",
            "net=mnist-xs",
            f"run_dir={run_dir}",
            f"train.batch_size={batch}",
            f"train.duration_mi={steps * batch / 2**20}",
            f"train.log_kimg={batch / 1000}",
            f"train.checkpoint_kimg={steps * batch / 2000}",
            "train.snapshot_kimg=1000",
            "train.sample_kimg=1000",
            "callbacks.sample_grid.num_steps=2",
            *extra,
        ],
    )
    train(read_train_config(cfg))
    newest = max(run_dir.glob("logs/csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    with open(newest) as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize(
    "steps", [pytest.param(24, id="24-steps"), pytest.param(300, id="300-steps", marks=pytest.mark.slow)]
)
def test_bf16_mixed_training_on_the_cpu_stays_float32_and_close_to_float32(tmp_path, steps):
    fp32 = run(tmp_path / "fp32", steps, batch=8)
    bf16 = run(tmp_path / "bf16", steps, "trainer.precision=bf16-mixed", batch=8)
    assert len(fp32) == len(bf16) == steps and all(math.isfinite(v) for v in bf16)
    third = steps // 3
    early32, early16 = sum(fp32[:third]) / third, sum(bf16[:third]) / third
    assert abs(early16 - early32) / early32 < BF16_EARLY_TOLERANCE, (early32, early16)
    tail32, tail16 = sum(fp32[-third:]) / third, sum(bf16[-third:]) / third
    assert abs(tail16 - tail32) < BF16_TAIL_TOLERANCE, (tail32, tail16)
    weights, _ = read_model_file(tmp_path / "bf16" / "final.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float32} and all(
        torch.isfinite(v).all() for v in weights.values()
    )
    ema, _ = read_model_file(next((tmp_path / "bf16" / "phema").glob("*.safetensors")))
    assert {v.dtype for v in ema.values()} == {torch.float32}
    ((_, checkpoint),) = list_checkpoints(tmp_path / "bf16")[-1:]
    state = torch.load(checkpoint, weights_only=True)["optimizer_states"][0]["state"]
    assert {t.dtype for s in state.values() for k, t in s.items() if k != "step"} == {torch.float32}


@pytest.mark.slow
def test_compiled_training_matches_eager_and_checkpoints_resume_both_ways(tmp_path):
    eager = run(tmp_path / "eager", 5)
    compiled = run(tmp_path / "compiled", 5, "train.compile=true")
    for a, b in zip(eager, compiled, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (eager, compiled)
    assert (
        read_model_file(tmp_path / "compiled" / "final.safetensors")[0].keys()
        == read_model_file(tmp_path / "eager" / "final.safetensors")[0].keys()
    )
    # a compiled run's checkpoint continues eagerly, and an eager one compiled
    assert len(run(tmp_path / "compiled", 8)) == 3
    assert len(run(tmp_path / "eager", 8, "train.compile=true")) == 3
    a = read_model_file(tmp_path / "compiled" / "final.safetensors")[0]
    b = read_model_file(tmp_path / "eager" / "final.safetensors")[0]
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)


@pytest.mark.slow
def test_compiled_sampling_keeps_the_guidance_hooks():
    torch.manual_seed(0)
    net = build_network(TINY_RGB_UNET).eval().requires_grad_(False)
    for p in net.parameters():
        if p.ndim == 0:
            p.data.fill_(0.8)
    seeds, labels = list(range(6)), [0, 1, 2, 3, 0, 1]
    terms = {
        "none": [],
        "pag": [PAG(weight=2.0)],
        "seg": [SEG(weight=2.0)],
        "tsg": [TSG(weight=1.5)],
        "layer_skip": [LayerSkip(weight=2.0)],
        "dropout": [Dropout(weight=2.0, p=0.2, apg=APG(eta=0.0))],
    }
    eager = {k: generate_images(net, seeds, labels, t, num_steps=3) for k, t in terms.items()}
    for name, guidance in terms.items():
        torch.testing.assert_close(
            generate_images(net, seeds, labels, guidance, num_steps=3, compile=True), eager[name], rtol=0, atol=1e-3
        )
    assert is_compiled(net) and not any(k.startswith("_orig_mod") for k in net.state_dict())
    for name in ("pag", "layer_skip", "dropout"):
        assert not torch.allclose(eager[name], eager["none"], atol=1e-3)  # the hooks act
    with pytest.raises(ValueError, match="cannot run SAG"):
        generate_images(net, seeds, labels, [SAG(weight=1.5)], num_steps=3, compile=True)
