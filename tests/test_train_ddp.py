"""DDP on two CPU processes (gloo): the global batch is split over the ranks, nimg counts all
ranks together, rank 0 writes the run folder. Slow (two extra Python processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoguide.io import read_card
from autoguide.train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_cpu_two_ranks(tmp_path):
    run = tmp_path / "ddp"
    batch, steps = 32, 6
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "experiment=toy2d-main",
            "debug=fast",
            "trainer=ddp_cpu",
            "logger=csv",
            f"run_dir={run}",
            "net.width=8",
            "net.depth=1",
            f"train.batch_size={batch}",
            "train.micro_batch=8",
            f"train.duration_mi={steps * batch / 2**20}",
            f"train.checkpoint_kimg={3 * batch / 1000}",
            "callbacks.sample_grid.num_images=32",
            "callbacks.sample_grid.num_steps=2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 device(s) x micro-batch 8 x 2 accumulation" in result.stderr + result.stdout
    assert [n for n, _ in list_checkpoints(run)] == [3 * batch, 6 * batch]
    assert read_card(run / "final.safetensors")["nimg"] == steps * batch
    assert (run / "config.yaml").is_file()
