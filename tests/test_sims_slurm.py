"""slurm/sims_chain.sh: the submitted jobs and their dependencies (a fake sbatch records them),
and the autoguide-sims command each job runs (a fake Python records it; Hydra parses it)."""

import json
import os
import subprocess
from pathlib import Path

from autoguide.apps.config_tree import compose

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "sims_chain.sh"
FAKE_SBATCH = """#!/bin/bash
count=$(cat "$FAKE_LOG/count" 2>/dev/null || echo 100)
count=$((count + 1))
echo "$count" > "$FAKE_LOG/count"
printf '%s\\n' "$@" > "$FAKE_LOG/job-$count"
echo "$count"
"""
FAKE_PYTHON = """#!/usr/bin/env python3
import json, os, sys
json.dump(sys.argv[1:], open(os.environ["FAKE_LOG"] + "/python.json", "w"))
"""
USER = ["base_run=/runs/s", "budget_mi=[0.5,1]", 'retrain.overrides=["logger=none"]']


def _env(tmp_path, **extra):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("sbatch", FAKE_SBATCH), ("python", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {
        **env,
        "PATH": f"{bin_dir}:{env['PATH']}",
        "FAKE_LOG": str(tmp_path),
        "AUTOGUIDE_ROOT": str(ROOT),
        "AUTOGUIDE_PYTHON": str(bin_dir / "python"),
        **extra,
    }


def test_chain_submits_dependent_jobs(tmp_path):
    out = tmp_path / "sims"
    result = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--out",
            str(out),
            "--iterations",
            "2",
            "--synth-tasks",
            "3",
            "--after",
            "77",
            "--sbatch",
            "--account=me",
            "--retrain-sbatch",
            "--gpus-per-node=8 --ntasks-per-node=8",
            "--",
            *USER,
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split("\n")[:-1] == [
        "base 101",
        "synthesize-0 102",
        "retrain-0 103",
        "synthesize-1 104",
        "retrain-1 105",
    ]
    jobs = {n: (tmp_path / f"job-{n}").read_text().split("\n")[:-1] for n in range(101, 106)}
    assert "--dependency=afterok:77" in jobs[101]
    for n, (after, kind) in {
        102: (101, "synthesize"),
        103: (102, "retrain"),
        104: (103, "synthesize"),
        105: (104, "retrain"),
    }.items():
        args = jobs[n]
        assert f"--dependency=afterok:{after}" in args and args[args.index("--job") + 1] == kind
        assert args[args.index("--iteration") + 1] == str((n - 102) // 2)
        assert args[-len(USER) :] == USER and "--account=me" in args
    assert "--array=0-2" in jobs[102] and "--array=0-2" in jobs[104]
    retrain = jobs[103]
    assert retrain.index("--ntasks-per-node=8") > retrain.index(
        "--ntasks-per-node=1"
    )  # the user's option comes last and wins

    refused = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), "--", *USER, "iteration=1"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "iteration" in refused.stderr


def _job_command(tmp_path, *args, **env):
    subprocess.run(["bash", str(SCRIPT), *args], env=_env(tmp_path, **env), check=True, capture_output=True, text=True)
    argv = json.loads((tmp_path / "python.json").read_text())
    assert argv[:2] == ["-m", "autoguide.apps.sims"]
    return compose("sims", argv[2:])


def test_jobs_run_autoguide_sims(tmp_path):
    out = tmp_path / "sims"
    common = ["--out", str(out), "--iterations", "2", "--synth-tasks", "3"]
    cfg = _job_command(
        tmp_path,
        "--job",
        "retrain",
        "--iteration",
        "1",
        *common,
        "--",
        *USER,
        SLURM_NTASKS="8",
        SLURM_JOB_NUM_NODES="2",
    )
    assert (cfg.out_dir, cfg.iterations, cfg.iteration, cfg.stop_after) == (str(out), 2, 1, "register")
    assert list(cfg.retrain.overrides) == ["logger=none", "trainer.devices=4", "trainer.num_nodes=2"]
    assert list(cfg.retrain.launcher) == ["srun", "--kill-on-bad-exit=1"] and list(cfg.budget_mi) == [0.5, 1]

    cfg = _job_command(tmp_path, "--job", "retrain", *common, "--", "base_run=/runs/s", "budget_mi=1")
    assert list(cfg.retrain.overrides) == ["trainer.devices=1", "trainer.num_nodes=1"]

    cfg = _job_command(
        tmp_path, "--job", "synthesize", "--iteration", "0", *common, "--", *USER, SLURM_ARRAY_TASK_ID="2"
    )
    assert (cfg.stop_after, cfg.iteration, cfg.synthesize.task, cfg.synthesize.num_tasks) == ("synthesize", 0, 2, 3)

    cfg = _job_command(tmp_path, "--job", "base", *common, "--", *USER)
    assert cfg.stop_after == "base"
