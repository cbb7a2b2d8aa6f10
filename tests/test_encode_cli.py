"""``autoguide-encode`` killed with SIGKILL after its first shard and run again ends with the
shards and manifest of an uninterrupted run, without rewriting the shard it had finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from conftest import tiny_vae

from autoguide.data.encode import EncodeSettings, encode_dataset

ARGS = ["--resolution", "64", "--shard-size", "20", "--batch", "1", "--workers", "0", "--dtype", "float16"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the test process (conftest); tiny convolutions, shared cores


def command(src: Path, out: Path, vae: Path) -> list[str]:
    return [sys.executable, "-m", "autoguide.apps.encode", str(src), str(out), "--vae", str(vae), *ARGS]


@pytest.mark.timeout(300)
def test_killed_encoder_continues_at_the_first_incomplete_shard(latent_assets, tmp_path):
    vae = tmp_path / "vae"
    tiny_vae(2, width=16).save_pretrained(vae)  # slow enough to be killed mid-run
    straight = encode_dataset(
        latent_assets["src"],
        tmp_path / "straight",
        vae,
        EncodeSettings(resolution=64, shard_size=20, batch_size=1),
        progress=False,
    )
    assert straight["shards"] == 10

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        command(latent_assets["src"], out, vae), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ONE_THREAD
    )
    deadline = time.monotonic() + 120
    while not (out / "parts" / "latents-000000.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the encoder ended before it could be killed"
    assert not (out / "manifest.json").exists()
    first = (out / "latents-000000.tar").stat()
    done_before = sorted(f"{p.stem}.tar" for p in (out / "parts").glob("latents-*.json"))  # complete: shard and record
    assert 1 <= len(done_before) < 10

    rerun = subprocess.run(
        command(latent_assets["src"], out, vae), capture_output=True, text=True, timeout=240, env=ONE_THREAD
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["written"] == [
        f"latents-{k:06d}.tar" for k in range(10) if f"latents-{k:06d}.tar" not in done_before
    ]
    assert summary["images_per_second"] > 0 and "img/s" in rerun.stderr  # the progress bar
    assert "took over the claim" in rerun.stderr  # the killed process's claim on its part
    again = (out / "latents-000000.tar").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # never rewritten
    for k in range(10):
        name = f"latents-{k:06d}.tar"
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert (out / "manifest.json").read_bytes() == (tmp_path / "straight" / "manifest.json").read_bytes()


def test_cli_errors_are_one_line_naming_the_input(latent_assets, tmp_path):
    missing = subprocess.run(
        command(tmp_path / "nowhere", tmp_path / "out", latent_assets["vae2"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "autoguide-encode: error: " in missing.stderr and "nowhere" in missing.stderr
    no_vae = subprocess.run(
        command(latent_assets["src"], tmp_path / "out", tmp_path), capture_output=True, text=True, timeout=120
    )
    assert no_vae.returncode == 1 and "no config.json there" in no_vae.stderr and "Traceback" not in no_vae.stderr
