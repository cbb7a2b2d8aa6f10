"""A run that goes non-finite stops with one line before anything non-finite is written
(autoguide.train.finite): NaN from the first step (an absurd learning rate, through the CLI) and
NaN after a few finite steps (a loss that turns NaN, in process)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import toy_run

from autoguide.apps.config_tree import compose
from autoguide.train import module as module_lib
from autoguide.train.checkpoint import list_checkpoints
from autoguide.train.finite import FiniteGuard, NonFiniteTraining, max_norm
from autoguide.train.gradients import FlatGradients
from autoguide.train.run import train
from autoguide.train.run_config import read_train_config

REPO = Path(__file__).resolve().parents[1]


def all_finite(path: Path) -> bool:
    if path.suffix == ".ckpt":
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    else:
        state = load_file(str(path))
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_guard_counts_steps_in_a_row_and_stops_on_weights():
    guard = FiniteGuard(max_nonfinite_steps=2)
    assert guard.check(1, 0, True, True, True) is None
    assert "gradients zeroed (1 of at most 2" in guard.check(2, 32, False, False, True)
    assert "non-finite gradient" in guard.check(3, 64, True, False, True)
    assert guard.check(4, 96, True, True, True) is None and guard.in_a_row == 0  # a finite step resets the count
    guard.check(5, 128, False, True, True)
    guard.check(6, 160, False, True, True)
    stop = r"^non-finite loss at optimizer step 7 \(nimg 192\): 3 such steps in a row"
    with pytest.raises(NonFiniteTraining, match=stop) as info:
        guard.check(7, 192, False, True, True)
    assert info.value.nimg == 192
    with pytest.raises(NonFiniteTraining, match=r"^non-finite network weights after optimizer step 1 \(nimg 0\)"):
        FiniteGuard(max_nonfinite_steps=100).check(1, 0, True, True, False)
    with pytest.raises(NonFiniteTraining):
        FiniteGuard(max_nonfinite_steps=0).check(1, 0, True, False, True)


def test_max_norm_is_finite_exactly_when_every_value_is():
    a, b = torch.randn(3, 4), torch.randn(5)
    assert max_norm([a, b]) == max(a.abs().max(), b.abs().max())
    for bad in (math.nan, math.inf, -math.inf):
        c = b.clone()
        c[2] = bad
        assert not torch.isfinite(max_norm([a, c]))
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(2))]
    grads = FlatGradients(params)
    params[0].grad.copy_(torch.randn(4, 3))
    assert grads.max_norm() == params[0].grad.abs().max()
    params[1].grad[1] = math.nan
    assert not torch.isfinite(grads.max_norm())
    grads.clean_()
    assert torch.isfinite(grads.max_norm())


def test_absurd_learning_rate_stops_at_the_first_step_with_one_line(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *toy_run(run, steps=8, every_steps=1), "train.lr_ref=1e38"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 4, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("autoguide-train: stopped: non-finite network weights after optimizer step 1 (nimg 0)"), last
    assert last.endswith("no checkpoint was written")
    assert not list_checkpoints(run) and not list((run / "phema").glob("*.safetensors"))
    assert not (run / "final.safetensors").exists()


def test_loss_turning_nan_stops_before_the_callbacks_write(tmp_path, monkeypatch):
    """Finite for 3 steps, then NaN: step 4 is tolerated (gradients zeroed), step 5 stops the run
    before its checkpoint and snapshot (every step) are written; everything written is finite."""
    calls = []
    finite_loss = module_lib.edm2_loss

    def loss_turning_nan(*args, **kwargs):
        calls.append(1)
        loss = finite_loss(*args, **kwargs)
        return loss * math.nan if len(calls) > 3 else loss

    monkeypatch.setattr(module_lib, "edm2_loss", loss_turning_nan)
    run = tmp_path / "run"
    cfg = compose("train", [*toy_run(run, steps=10, every_steps=1), "train.max_nonfinite_steps=1"])
    with pytest.raises(NonFiniteTraining) as info:
        train(read_train_config(cfg))
    message = str(info.value)
    assert message.startswith("non-finite loss at optimizer step 5 (nimg 128): 2 such steps in a row exceed"), message
    assert message.endswith(f"the last checkpoint, at nimg 128: {run / 'checkpoints' / 'nimg-000000000128.ckpt'}")
    assert [n for n, _ in list_checkpoints(run)] == [96, 128]
    snapshots = sorted((run / "phema").glob("*.safetensors"))
    assert snapshots and max(int(p.name[6:18]) for p in snapshots) == 128
    assert all(all_finite(p) for _, p in list_checkpoints(run)) and all(all_finite(p) for p in snapshots)
    assert not (run / "final.safetensors").exists()


@pytest.mark.parametrize("override", ["train.P_mean=60", "net.sigma_data=1e-30"])
def test_loss_non_finite_from_the_first_step_stops_after_the_patience(tmp_path, override):
    """EDM2's zeroing alone would let these runs "finish" with untrained weights."""
    run = tmp_path / "run"
    cfg = compose("train", [*toy_run(run, steps=10, every_steps=1), override, "train.max_nonfinite_steps=2"])
    with pytest.raises(
        NonFiniteTraining, match=r"^non-finite (loss|gradient) at optimizer step 3 \(nimg 64\): 3 such steps"
    ):
        train(read_train_config(cfg))
    assert all(all_finite(p) for _, p in list_checkpoints(run)) and not (run / "final.safetensors").exists()
