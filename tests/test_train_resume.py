"""A run killed with SIGKILL after a checkpoint and resumed at once (same command, resume=auto,
no clean-up: its stale claim on the run folder is recognised) ends bit for bit where an
uninterrupted run ends: raw weights and post-hoc EMA snapshots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_at_first_checkpoint
from safetensors.torch import load_file
from tiny import toy_run

from autoguide.train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]
STEPS = 80
BATCH = 64
CHECKPOINT_STEPS = 20


def command(run_dir: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        *toy_run(run_dir, STEPS, CHECKPOINT_STEPS, batch=BATCH, width=16, depth=2),
        # class-conditional (both trees, labels) so that label dropout's randomness is resumed too
        "data.classes=AB",
        "data.conditional=true",
        "net.label_dim=2",
        "train.lr_rampup_mi=0.001",
        "train.lr_ref_batches=20",
        "train.cond_drop_prob=0.1",
        "callbacks.checkpoint.keep=0",
        "hydra.job_logging.root.level=WARNING",
    ]


def run_to_end(run_dir: Path, cwd: Path) -> None:
    result = subprocess.run(command(run_dir), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_identical(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{a.name}: tensor {key} differs"


@pytest.mark.timeout(900)
def test_sigkill_and_resume_is_bit_exact(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_end(straight, tmp_path)

    proc = subprocess.Popen(command(killed), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    saved = kill_at_first_checkpoint(proc, killed)
    assert saved and saved[-1][0] < STEPS * BATCH, "no intermediate checkpoint before the kill"
    assert not (killed / "final.safetensors").exists()
    assert (killed / ".autoguide-claim.json").is_file(), "the killed run's claim stays behind"

    run_to_end(killed, tmp_path)  # the same command again: resume=auto, the stale claim taken over
    assert not (killed / ".autoguide-claim.json").exists(), "a finished run gives its claim back"
    assert_identical(straight / "final.safetensors", killed / "final.safetensors")
    snaps = sorted(p.name for p in (straight / "phema").glob("*.safetensors"))
    assert snaps == sorted(p.name for p in (killed / "phema").glob("*.safetensors"))
    assert len(snaps) == 2 * STEPS // CHECKPOINT_STEPS
    for name in snaps:
        assert_identical(straight / "phema" / name, killed / "phema" / name)
    # One checkpoint per interval, the last at the end (keep=0 keeps all).
    assert [n for n, _ in list_checkpoints(straight)] == [
        k * CHECKPOINT_STEPS * BATCH for k in range(1, STEPS // CHECKPOINT_STEPS + 1)
    ]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_damaged_newest_checkpoint_resumes_from_the_newest_intact_one_bit_exactly(tmp_path: Path) -> None:
    """The newest checkpoint truncated, the one before garbled: the rerun warns naming both,
    continues from the third newest and ends bit for bit where the uninterrupted run ended."""
    run_dir = tmp_path / "run"
    run_to_end(run_dir, tmp_path)
    final = tensors(run_dir / "final.safetensors")
    (run_dir / "final.safetensors").unlink()
    checkpoints = [path for _, path in list_checkpoints(run_dir)]
    checkpoints[-1].write_bytes(checkpoints[-1].read_bytes()[: checkpoints[-1].stat().st_size // 2])
    garbled = bytearray(checkpoints[-2].read_bytes())
    garbled[len(garbled) // 2] ^= 0xFF
    checkpoints[-2].write_bytes(bytes(garbled))
    result = subprocess.run(command(run_dir), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "SHA-256 differs" in line]
    assert len(warnings) == 2 and checkpoints[-1].name in warnings[0] and checkpoints[-2].name in warnings[1], output
    assert all(f"resuming from the older {checkpoints[-3].name}" in w for w in warnings)
    again = tensors(run_dir / "final.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
