"""A rerun continues its run only with the recorded settings (autoguide.train.rerun): a changed
rerun is refused naming each changed key, before anything in the run folder is rewritten; the
resumable keys and ``resume_changed=true`` continue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny import toy_run

from autoguide.apps.config_tree import compose
from autoguide.core.typed_settings import ConfigError
from autoguide.io import read_card
from autoguide.train.checkpoint import list_checkpoints
from autoguide.train.rerun import changed_keys, flatten, resumable
from autoguide.train.run import train
from autoguide.train.run_config import read_train_config

REPO = Path(__file__).resolve().parents[1]
BATCH = 32


def toy(run_dir: Path, steps: int) -> list[str]:
    return toy_run(run_dir, steps, every_steps=2, batch=BATCH)


def folder_state(run: Path) -> dict[str, bytes]:
    files = [p for p in sorted(run.rglob("*")) if p.is_file() and ".autoguide-claim" not in p.name]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def test_changed_keys_and_the_resumable_list():
    old = {"train": {"lr_ref": 0.01, "log_kimg": 1}, "data": {"classes": "A"}, "logger": {"csv": {"x": 1}}}
    new = {"train": {"lr_ref": 0.02, "log_kimg": 2}, "data": {"classes": "AB"}, "logger": {}}
    assert flatten(old) == {"train.lr_ref": 0.01, "train.log_kimg": 1, "data.classes": "A", "logger.csv.x": 1}
    assert changed_keys(old, new) == ["data.classes", "logger", "logger.csv.x", "train.log_kimg", "train.lr_ref"]
    assert [k for k in changed_keys(old, new) if not resumable(k)] == ["data.classes", "train.lr_ref"]
    assert resumable("callbacks.sample_grid.num_images") and not resumable("callbacks.phema.stds")
    assert not resumable("train.log_kimg_extra") and not resumable("trainer.precision")


def test_changed_rerun_is_refused_and_resumable_changes_continue(tmp_path):
    run = tmp_path / "run"
    train(read_train_config(compose("train", toy(run, steps=2))))
    before = folder_state(run)

    for extra, named in (
        (["train.lr_ref=0.02"], r"train\.lr_ref 0\.01 -> 0\.02"),
        (["train.batch_size=16", "train.lr_ref=0.005"], r"train\.batch_size 32 -> 16, train\.lr_ref 0\.01 -> 0\.005"),
        (["data.classes=AB"], r"data\.classes 'A' -> 'AB'"),
        (["net.width=16"], r"net\.width 8 -> 16"),
    ):
        with pytest.raises(ConfigError, match=rf"^run_dir {run} holds a run with other settings: {named}; ") as info:
            train(read_train_config(compose("train", toy(run, steps=4) + extra)))
        assert "resume_changed=true" in str(info.value) and "\n" not in str(info.value)
        assert folder_state(run) == before, f"{extra}: the refused rerun changed the run folder"

    # longer, other sample grid and log interval: resumable
    train(
        read_train_config(
            compose("train", [*toy(run, steps=4), "callbacks.sample_grid.num_images=4", "train.log_kimg=1"])
        )
    )
    assert [n for n, _ in list_checkpoints(run)] == [64, 128]

    train(read_train_config(compose("train", [*toy(run, steps=6), "train.lr_ref=0.02", "resume_changed=true"])))
    assert read_card(run / "final.safetensors")["nimg"] == 192
    assert "lr_ref: 0.02" in (run / "config.yaml").read_text()


def test_changed_rerun_on_the_command_line_rewrites_nothing(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, str(REPO / "train.py"), *toy(run, steps=2)]
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    before = folder_state(run)
    assert "train.lr_ref" not in (run / "logs" / "hydra" / "overrides.yaml").read_text()

    result = subprocess.run([*command, "train.lr_ref=0.03"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    refusal = f"config error: run_dir {run} holds a run with other settings: train.lr_ref 0.01 -> 0.03; "
    assert len(lines) == 1 and lines[0].startswith(refusal), result.stderr
    assert folder_state(run) == before
