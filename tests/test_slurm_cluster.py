"""slurm/ scripts on a real SLURM cluster (marked ``slurm``; also ``slow``, so the default run
skips them): run with ``pytest -m slurm``. Without ``sbatch`` the tests skip; with the client
tools but no controller they start the local one-node cluster of ``slurm/local-cluster.sh``
(root only).

- a training job signalled with SIGUSR1 (what ``--signal=USR1@120`` sends before the time limit)
  saves a checkpoint, requeues itself and resumes in the same run folder, keyed on the job, with
  the same wandb run id; it ends bit for bit where an uninterrupted run ends, and Lightning's own
  SLURM handler (mid-step ``hpc_ckpt_*.ckpt``) never ran;
- the same through the submitit launcher (``-m hydra/launcher=slurm``) with submitit's SIGUSR2:
  the training's handler, not submitit's, runs; the submitting process waits through the requeue;
- DDP under ``srun`` (2 tasks): identical weights on both ranks, only rank 0 writes;
- ``slurm/chain.sh``: main and guide training, both reconstructions and a generation array run
  in dependency order and leave the models and every seed's sample;
- ``slurm/local-cluster.sh start`` is idempotent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_slurm_plugin, skip_unless_slurm
from safetensors.torch import load_file
from test_distributed import check_ranks, probe_env, train_overrides

from autoguide.io import read_card

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "slurm"
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]

# A toy run of 410 optimizer steps: long enough to be signalled after its first snapshot, short
# enough for a test. Checkpoints only at the end, so any other checkpoint is the preemption's.
BATCH = 256
DURATION_MI = 0.1
TOTAL_NIMG = -(-round(DURATION_MI * 2**20) // BATCH) * BATCH
SNAPSHOT_KIMG = 16 * BATCH / 1000
TOY_RUN = [
    "experiment=toy2d-main",
    "callbacks.progress_bar=null",
    f"train.batch_size={BATCH}",
    f"train.duration_mi={DURATION_MI}",
    "train.checkpoint_kimg=100000",
    f"train.snapshot_kimg={SNAPSHOT_KIMG}",
    "train.sample_kimg=100000",
    f"train.log_kimg={SNAPSHOT_KIMG}",
    "callbacks.sample_grid.num_images=100",
    "callbacks.sample_grid.num_steps=4",
    "callbacks.sample_grid.batch_size=100",
]


# --------------------------------------------------------------------------------- helpers
def _ready() -> bool:
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0


@pytest.fixture(scope="session")
def cluster() -> None:
    """A SLURM controller that answers; starts the local cluster when possible, else skips."""
    if shutil.which("sbatch") is None:
        skip_unless_slurm(
            "sbatch not found: no SLURM client tools (apt-get install slurm-wlm munge; slurm/local-cluster.sh start)"
        )
    if not _ready():
        has_daemon = shutil.which("slurmctld") is not None or Path("/usr/sbin/slurmctld").exists()
        if os.geteuid() != 0 or not has_daemon:
            skip_unless_slurm(
                "no SLURM controller answers `scontrol ping`, and slurm/local-cluster.sh needs root and slurmctld"
            )
        result = subprocess.run(
            ["bash", str(SLURM / "local-cluster.sh"), "start"], capture_output=True, text=True, timeout=180
        )
        if result.returncode != 0 or not _ready():
            skip_unless_slurm(f"slurm/local-cluster.sh start failed: {result.stderr.strip()[-500:]}")


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for sbatch: no variables of an enclosing job, one thread, runs under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_"))}
    env.update(
        AUTOGUIDE_ROOT=str(ROOT),
        AUTOGUIDE_RUNS_DIR=str(tmp_path / "runs"),
        AUTOGUIDE_PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    env.update(extra)
    return env


def sbatch(args: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        ["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_info(job: str) -> list[dict[str, str]]:
    """``scontrol show job`` as one dict per job (array tasks: one each)."""
    result = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_finished(job: str, timeout: float, log: Path | None = None) -> list[dict[str, str]]:
    def finished():
        info = job_info(job)
        return info if info and all(i["JobState"] in FINISHED for i in info) else None

    try:
        return wait_until(finished, timeout, f"job {job} to finish", interval=2)
    except AssertionError:
        subprocess.run(["scancel", job])
        tail = log.read_text()[-3000:] if log and log.exists() else ""
        raise AssertionError(f"job {job} did not finish in {timeout:.0f} s: {job_info(job)}\n{tail}") from None


def first_snapshot(run_dir: Path) -> bool:
    return (run_dir / "phema").is_dir() and any((run_dir / "phema").glob("phema-*.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), (
            f"{a} and {b} differ in {key}: max |diff| {(ta[key] - tb[key]).abs().max()}"
        )


def assert_resumed_from_preemption_checkpoint(run_dir: Path, log_text: str) -> int:
    """Exactly two checkpoints remain (preemption and end; no periodic ones in TOY_RUN), and the
    restarted job loaded the first. Returns its image count."""
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("nimg-*.ckpt"))
    nimgs = [int(n[5:17]) for n in names]
    assert len(nimgs) == 2 and nimgs[-1] == TOTAL_NIMG, (
        f"checkpoints {names}: expected the preemption's and the final one"
    )
    stop = nimgs[0]
    assert 0 < stop < TOTAL_NIMG and stop % BATCH == 0
    assert f"nimg-{stop:012d}.ckpt" in log_text, "the restarted job did not resume from the preemption checkpoint"
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt")), "Lightning's own SLURM handler saved a mid-step checkpoint"
    return stop


def wandb_run_ids(run_dir: Path) -> list[str]:
    return [p.name.rsplit("-", 1)[1] for p in sorted((run_dir / "logs" / "wandb").glob("offline-run-*"))]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """TOY_RUN without interruption (one thread, like the jobs), for bitwise comparison."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    env = job_env(run_dir.parent)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TOY_RUN, "logger=none", f"run_dir={run_dir}"],
        env=env,
        cwd=run_dir.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# ----------------------------------------------------------------------------------- tests
def test_local_cluster_start_is_idempotent(cluster):
    if os.geteuid() != 0:
        pytest.skip("slurm/local-cluster.sh needs root")
    state = Path(os.environ.get("LOCAL_SLURM_DIR", "/var/lib/autoguide-slurm"))
    if not (state / "slurmctld.pid").exists():
        pytest.skip("the running cluster was not started by slurm/local-cluster.sh")
    pids = {name: (state / f"{name}.pid").read_text() for name in ("slurmctld", "slurmd")}
    result = subprocess.run(
        ["bash", str(SLURM / "local-cluster.sh"), "start"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert {name: (state / f"{name}.pid").read_text() for name in pids} == pids  # nothing restarted
    assert subprocess.run(["bash", str(SLURM / "local-cluster.sh"), "status"], capture_output=True).returncode == 0


def test_sbatch_training_requeues_on_usr1_and_resumes(cluster, tmp_path, reference_run):
    env = job_env(tmp_path)
    log = tmp_path / "train.out"
    job = sbatch([*CPU_JOB, f"--output={log}", str(SLURM / "train.sbatch"), *TOY_RUN, "logger=wandb"], env, tmp_path)
    run_dir = tmp_path / "runs" / f"toy2d-main-{job}"  # keyed on the job, not on a timestamp
    wait_until(lambda: first_snapshot(run_dir), 300, "the first EMA snapshot", interval=0.2)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)

    [info] = wait_finished(job, 600, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, text[-3000:])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run_dir.name]
    restart = text.index(f"[job {job} restart 1]")
    assert_resumed_from_preemption_checkpoint(run_dir, text[restart:])
    assert_same_weights(run_dir / "final.safetensors", reference_run / "final.safetensors")
    ids = wandb_run_ids(run_dir)
    assert len(ids) == 2 and ids[0] == ids[1], f"wandb runs of the two starts: {ids}"


def test_submitit_sweep_requeues_on_usr2_and_resumes(cluster, tmp_path, reference_run):
    import_slurm_plugin("hydra_plugins.hydra_submitit_launcher")
    name = f"ag-test-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.launcher.name={name}",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=15",
        *TOY_RUN,
        "logger=none",
        f"run_dir={run_dir}",
    ]
    submitter = subprocess.Popen(
        command, env=job_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        job = wait_until(
            lambda: subprocess.run(
                ["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True
            ).stdout.strip(),
            120,
            "the submitit job",
        )
        wait_until(lambda: first_snapshot(run_dir), 300, "the first EMA snapshot", interval=0.2)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        output, _ = submitter.communicate(timeout=600)
    finally:
        if submitter.poll() is None:
            submitter.kill()
            subprocess.run(["scancel", "-n", name])
    assert submitter.returncode == 0, output[-3000:]
    [info] = wait_finished(job, 120)  # the result file comes a moment before the job leaves
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", info
    job_log = "".join(p.read_text() for p in sorted((tmp_path / "sweep" / ".submitit" / job).glob("*_log.*")))
    starts = job_log.split("Loading pickle")
    assert len(starts) == 3, "expected two starts of the submitit job"
    assert_resumed_from_preemption_checkpoint(run_dir, starts[2])
    assert_same_weights(run_dir / "final.safetensors", reference_run / "final.safetensors")


def test_srun_ddp_two_tasks_identical_weights_and_rank0_writes(cluster, tmp_path):
    run_dir = tmp_path / "run"
    env, out = probe_env(tmp_path, run_dir)
    env = job_env(tmp_path, **{k: v for k, v in env.items() if k.startswith(("AG_PROBE", "PYTHONPATH"))})
    log = tmp_path / "ddp.out"
    job = sbatch(
        [
            *CPU_JOB,
            "--ntasks-per-node=2",
            f"--output={log}",
            str(SLURM / "train.sbatch"),
            *train_overrides(run_dir, out),
            "trainer=ddp_cpu",
        ],
        env,
        tmp_path,
    )
    [info] = wait_finished(job, 600, log)
    assert info["JobState"] == "COMPLETED", log.read_text()[-3000:]
    check_ranks(run_dir, out, world_size=2, micro_batch=8, accumulate=2)


def test_chain_runs_main_guide_reconstruct_generate_in_order(cluster, tmp_path):
    out = tmp_path / "ag"
    tiny = (
        "callbacks.progress_bar=null logger=none train.batch_size=256 train.duration_mi=0.02 "
        "train.snapshot_kimg=2.048 train.checkpoint_kimg=100000 train.sample_kimg=100000 "
        "callbacks.sample_grid.num_images=100 callbacks.sample_grid.num_steps=4"
    )
    cpu = " ".join(CPU_JOB)
    result = subprocess.run(
        [
            "bash",
            str(SLURM / "chain.sh"),
            "--out",
            str(out),
            "--main",
            f"experiment=toy2d-main {tiny}",
            "--guide",
            f"experiment=toy2d-guide {tiny}",
            "--main-std",
            "0.01",
            "--guide-std",
            "0.05",
            "--weight",
            "2",
            "--images",
            "10",
            "--images-per-task",
            "4",
            "--generate",
            "output.formats=[npz] sampler.num_steps=4 batch_size=4",
            "--train-sbatch",
            cpu,
            "--reconstruct-sbatch",
            cpu,
            "--generate-sbatch",
            cpu,
        ],
        env=job_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    jobs = dict(line.split() for line in result.stdout.splitlines())
    assert list(jobs) == ["main", "guide", "reconstruct-main", "reconstruct-guide", "generate"]
    infos = {role: wait_finished(job, 900, out / f"slurm-{role}-{job}.out") for role, job in jobs.items()}
    logs = "\n".join(p.name + ":\n" + p.read_text()[-1500:] for p in out.glob("slurm-*.out"))
    assert all(i["JobState"] == "COMPLETED" for infos_ in infos.values() for i in infos_), logs
    assert len(infos["generate"]) == 3

    def started(role):
        return min(i["StartTime"] for i in infos[role])

    def ended(role):
        return max(i["EndTime"] for i in infos[role])

    assert started("reconstruct-main") >= ended("main") and started("reconstruct-guide") >= ended("guide")
    assert started("generate") >= max(ended("reconstruct-main"), ended("reconstruct-guide"))

    models = {}
    for role, std in (("main", 0.01), ("guide", 0.05)):
        [path] = (out / "models" / role).glob("*.safetensors")
        card = read_card(path)
        assert card["ema_std"] == pytest.approx(std)
        assert card["nimg"] == read_card(out / role / "final.safetensors")["nimg"]
        models[role] = path
    seeds = []
    for folder in ("seeds-0-3", "seeds-4-7", "seeds-8-9"):
        with np.load(out / "generated" / folder / "samples.npz") as npz:
            seeds += npz["seeds"].tolist()
            assert np.isfinite(npz["samples"]).all() and npz["samples"].shape[1:] == (2,)
        recorded = (out / "generated" / folder / "generate.yaml").read_text()
        assert f"model: {models['main']}" in recorded and f"guide: {models['guide']}" in recorded
        assert re.search(r"weight: 2(\.0)?\b", recorded)
    assert seeds == list(range(10))


RENDEZVOUS = """
import importlib, os, sys, time
from pathlib import Path

assert sys.argv[1] == "-m", sys.argv
app = importlib.import_module(sys.argv[2])  # the slow imports happen before the wait
folder = Path(__file__).parent
(folder / f"ready-{{os.environ['SLURM_ARRAY_TASK_ID']}}").touch()
deadline = time.time() + 300
while len(list(folder.glob("ready-*"))) < {tasks} and time.time() < deadline:
    time.sleep(0.1)
sys.argv = [app.__file__, *sys.argv[3:]]  # what `python -m` sets
app.main()
"""


def rendezvous_python(folder: Path, tasks: int) -> str:
    """An interpreter for ``AUTOGUIDE_PYTHON`` that runs ``-m <app>`` only once ``tasks`` array
    tasks have imported it, so that no task can spend a shared budget before the others start."""
    folder.mkdir()
    (folder / "rendezvous.py").write_text(RENDEZVOUS.format(tasks=tasks))
    launcher = folder / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "rendezvous.py"}" "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def test_search_array_tasks_share_one_study(cluster, tmp_path):
    """``slurm/search.sbatch`` with two array tasks on tiny toy runs: both tasks work on the one
    journal study in OUT_DIR, the budget is respected, one task writes best.json."""
    import optuna
    from test_eval_search import TOY_SEARCH
    from test_eval_sweep import make_run

    main, guide = make_run(tmp_path / "main", 16, 0), make_run(tmp_path / "guide", 8, 1)
    out = tmp_path / "search"
    args = [
        f"main.run={main}",
        f"guides.runs=[{guide}]",
        "search.budget=700",
        *TOY_SEARCH,
    ]
    env = job_env(tmp_path, OUT_DIR=str(out), AUTOGUIDE_PYTHON=rendezvous_python(tmp_path / "rendezvous", 2))
    job = sbatch([*CPU_JOB, "--array=0-1", str(SLURM / "search.sbatch"), *args], env, tmp_path)
    infos = wait_finished(job, 900)
    logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("slurm-ag-search-*.out"))
    assert [i["JobState"] for i in infos] == ["COMPLETED", "COMPLETED"], logs
    study = optuna.load_study(
        study_name="search",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.log"))),
    )
    jobs = {t.user_attrs["holder"]["job"] for t in study.trials}
    assert jobs == {f"{job}_0", f"{job}_1"}, jobs
    assert sum(t.user_attrs["images"] for t in study.trials) <= 700
    best = json.loads((out / "best.json").read_text())
    assert best["holdout"]["seeds"] == "80-159" and best["images_spent"] <= 700
