"""Preemption without a cluster: SIGUSR1 (SLURM's warning signal) or SIGUSR2 (submitit's) makes a
training process save a checkpoint at the next optimizer step and exit with status 3; rerunning
the command continues from that checkpoint and ends bit for bit where an uninterrupted run ends.
(On a cluster the process also requeues its job: tests/test_slurm_cluster.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import toy_run

from autoguide.runtime.preemption import EXIT_PREEMPTED, Preempted, SignalFlag, parse_signals, slurm_job_key

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
STEPS = 300


def command(run_dir: Path) -> list[str]:
    """A snapshot every 10 steps and no checkpoint before the end: any other is the preemption's."""
    only_final = 10 * STEPS
    run = toy_run(run_dir, STEPS, 10, batch=BATCH, width=16, depth=2, checkpoint_every_steps=only_final)
    return [sys.executable, str(REPO / "train.py"), *run]


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "OMP_NUM_THREADS": "1"}


# SIGUSR2 is the same path with the other default signal: about 20 s, so -m slow (.ci/run runs it)
@pytest.mark.parametrize("sig", [signal.SIGUSR1, pytest.param(signal.SIGUSR2, marks=pytest.mark.slow)])
def test_signal_saves_a_checkpoint_and_the_rerun_continues_exactly(tmp_path, sig):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    proc = subprocess.Popen(
        command(run_dir), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not list((run_dir / "phema").glob("phema-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    [(name)] = [p.name for p in (run_dir / "checkpoints").glob("*.ckpt")]
    assert (run_dir / "checkpoints" / f"{name}.sha256").is_file()
    stop = int(name[5:17])
    assert 0 < stop < STEPS * BATCH and stop % BATCH == 0 and not (run_dir / "final.safetensors").exists()
    assert not list(run_dir.glob("hpc_ckpt_*"))

    subprocess.run(command(run_dir), cwd=tmp_path, env=env(), check=True, capture_output=True, timeout=300)
    subprocess.run(command(reference), cwd=tmp_path, env=env(), check=True, capture_output=True, timeout=300)
    a, b = load_file(str(run_dir / "final.safetensors")), load_file(str(reference / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_signal_flag_records_and_restores():
    previous = signal.getsignal(signal.SIGUSR1)
    flag = SignalFlag(parse_signals(["USR1", "SIGUSR2"]))
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.received == signal.SIGUSR1
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGUSR1) == previous


@pytest.mark.parametrize("name", ["SIGKILL", "USR3", "nope"])
def test_uncatchable_or_unknown_signals_are_refused(name):
    with pytest.raises(ValueError, match="preempt_signals"):
        parse_signals([name])


def test_job_key_and_exit_status():
    assert slurm_job_key({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_key({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2"}) == "7_2"
    assert slurm_job_key({}) is None
    error = Preempted(128, "ckpt", None)
    assert isinstance(error, SystemExit) and not isinstance(error, Exception) and error.code == EXIT_PREEMPTED


def test_sigterm_saves_exits_3_without_requeue_and_the_rerun_finishes(tmp_path):
    """SIGTERM (scancel, timeout, kill) saves like the preemption signals and exits 3, but asks for
    no requeue (a fake ``scontrol`` records the calls); the rerun continues to the end."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol-calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\n[ "$1" = requeue ] && echo "$@" >> {calls}\nexit 0\n')
    (bin_dir / "scontrol").chmod(0o755)
    job_env = {**env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        command(run_dir), cwd=tmp_path, env=job_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while not list((run_dir / "phema").glob("phema-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, output[-3000:]
    assert "preempted at nimg" in output and "not requeued" in output, output[-3000:]
    [(name)] = [p.name for p in (run_dir / "checkpoints").glob("*.ckpt")]
    assert 0 < int(name[5:17]) < STEPS * BATCH and not (run_dir / "final.safetensors").exists()
    assert not calls.exists(), calls.read_text()

    subprocess.run(command(run_dir), cwd=tmp_path, env=env(), check=True, capture_output=True, timeout=300)
    from autoguide.io import read_card

    assert read_card(run_dir / "final.safetensors")["nimg"] == STEPS * BATCH
