"""slurm/ scripts without a cluster: shell syntax and lint, the sbatch headers that make
requeueing work, the helpers of slurm/common.sh, the srun command of the training scripts, the
seed ranges of the generation array, the job graph of slurm/chain.sh (--dry-run) and the
submitit launcher config. The scripts run against a real cluster in test_slurm_cluster.py.

Where a script would start a program (srun, Python), a recorder stands in for it and the test
checks the command line the script built."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import import_slurm_plugin
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "slurm"
SCRIPTS = [
    "common.sh",
    "chain.sh",
    "local-cluster.sh",
    "train.sbatch",
    "train-multinode.sbatch",
    "reconstruct.sbatch",
    "generate.sbatch",
    "encode.sbatch",
    "eval.sbatch",
    "search.sbatch",
]
TRAIN_SCRIPTS = ["train.sbatch", "train-multinode.sbatch"]

RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
"""


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without SLURM_* variables, with recorders for srun and Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("srun", "python-recorder"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AUTOGUIDE_", "SEED", "OUT_DIR"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        RECORD=str(tmp_path / "record.jsonl"),
        AUTOGUIDE_ROOT=str(ROOT),
        AUTOGUIDE_PYTHON=str(bin_dir / "python-recorder"),
    )
    env.update(extra)
    return env


def recorded(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_bash(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``code`` in bash after sourcing slurm/common.sh."""
    return subprocess.run(
        ["bash", "-c", f'source "{SLURM}/common.sh"; {code}'], env=env, capture_output=True, text=True, timeout=60
    )


# ------------------------------------------------------------------------- syntax and headers
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses(name):
    result = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_scripts_pass_shellcheck():
    result = subprocess.run(
        ["shellcheck", "-x", "-P", "SCRIPTDIR/..", *SCRIPTS], cwd=SLURM, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def sbatch_options(name: str) -> dict[str, str]:
    """The ``#SBATCH --key=value`` header lines of a script."""
    found = re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", (SLURM / name).read_text(), flags=re.M)
    return dict(found)


@pytest.mark.parametrize("name", TRAIN_SCRIPTS)
def test_training_scripts_ask_for_a_signal_and_requeue(name):
    options = sbatch_options(name)
    signal, _, seconds = options["signal"].partition("@")
    assert signal == "USR1" and int(seconds) >= 60  # sent to the steps (no "B:"), in time to checkpoint
    assert "requeue" in options and options["open-mode"] == "append"
    assert int(options["ntasks-per-node"]) == int(options["gpus-per-node"])  # one task per GPU


@pytest.mark.parametrize("name", ["generate.sbatch", "encode.sbatch", "eval.sbatch", "search.sbatch"])
def test_array_scripts_are_arrays(name):
    assert sbatch_options(name)["array"] == "0-0"
    assert "%A_%a" in sbatch_options(name)["output"]


# ------------------------------------------------------------------------------ common.sh
def test_common_sets_environment_defaults_without_overriding(tmp_path):
    env = clean_env(tmp_path, SLURM_CPUS_PER_TASK="3")
    env.pop("WANDB_MODE", None)
    result = run_bash('echo "$WANDB_MODE $HYDRA_FULL_ERROR $OMP_NUM_THREADS $PYTHONUNBUFFERED"', env)
    assert result.stdout.split() == ["offline", "1", "3", "1"]
    result = run_bash('echo "$WANDB_MODE"', {**env, "WANDB_MODE": "online"})
    assert result.stdout.strip() == "online"


def test_common_sources_the_activation_file(tmp_path):
    activate = tmp_path / "activate"
    activate.write_text("export ACTIVATED=yes\n")
    env = clean_env(tmp_path, AUTOGUIDE_ACTIVATE=str(activate))
    assert run_bash('echo "$ACTIVATED"', env).stdout.strip() == "yes"
    missing = run_bash("true", {**env, "AUTOGUIDE_ACTIVATE": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "AUTOGUIDE_ACTIVATE" in missing.stderr


def test_common_rejects_a_folder_that_is_no_checkout(tmp_path):
    result = run_bash("true", clean_env(tmp_path, AUTOGUIDE_ROOT=str(tmp_path)))
    assert result.returncode == 2 and "not an autoguide checkout" in result.stderr


@pytest.mark.parametrize(
    ("slurm_env", "key"),
    [
        ({"SLURM_JOB_ID": "41"}, "41"),
        ({"SLURM_JOB_ID": "45", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "3"}, "41_3"),
    ],
)
def test_job_key_survives_requeue_and_names_array_tasks(tmp_path, slurm_env, key):
    assert run_bash("ag_job_key", clean_env(tmp_path, **slurm_env)).stdout.strip() == key


def test_job_key_outside_slurm_is_an_error(tmp_path):
    result = run_bash("ag_job_key", clean_env(tmp_path))
    assert result.returncode == 2 and "SLURM_JOB_ID" in result.stderr


def test_override_value_finds_plain_and_plus_forms(tmp_path):
    env = clean_env(tmp_path)
    code = 'ag_override_value run_dir a=1 "$@"'
    for args, value in ((["run_dir=/x"], "/x"), (["++run_dir=/y"], "/y"), (["run_dirs=/z"], ""), ([], "")):
        result = subprocess.run(
            ["bash", "-c", f'source "{SLURM}/common.sh"; {code}', "bash", *args],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.stdout.strip() == value, args


def test_single_model_in_a_folder(tmp_path):
    env = clean_env(tmp_path)
    folder = tmp_path / "models"
    folder.mkdir()
    assert run_bash(f"ag_single_model {folder}", env).returncode == 2
    (folder / "ema-000000001024-0.0500.safetensors").write_bytes(b"")
    assert run_bash(f"ag_single_model {folder}", env).stdout.strip() == str(
        folder / "ema-000000001024-0.0500.safetensors"
    )
    (folder / "ema-000000001024-0.1000.safetensors").write_bytes(b"")
    result = run_bash(f"ag_single_model {folder}", env)
    assert result.returncode == 2 and "found 2" in result.stderr


# ------------------------------------------------------------------------- training command
def run_train_script(tmp_path: Path, args: list[str], **slurm_env: str) -> subprocess.CompletedProcess:
    env = clean_env(tmp_path, SLURM_JOB_ID="77", **slurm_env)
    return subprocess.run(
        ["bash", str(SLURM / "train.sbatch"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_training_runs_one_task_per_device_in_a_folder_keyed_on_the_job(tmp_path):
    result = run_train_script(tmp_path, ["experiment=toy2d-main", "seed=3"], SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="8")
    assert result.returncode == 0, result.stderr
    [call] = recorded(tmp_path)
    assert call[:4] == [
        "srun",
        "--kill-on-bad-exit=1",
        str(tmp_path / "bin" / "python-recorder"),
        str(ROOT / "train.py"),
    ]
    overrides = call[4:]
    assert overrides[:3] == ["trainer.devices=4", "trainer.num_nodes=2", "run_dir=${paths.runs_dir}/${name}-77"]
    assert overrides[3:] == ["experiment=toy2d-main", "seed=3"]


def test_training_keeps_an_explicit_run_folder(tmp_path):
    result = run_train_script(tmp_path, ["run_dir=/data/runs/s"], SLURM_NTASKS="1")
    assert result.returncode == 0, result.stderr
    [call] = recorded(tmp_path)
    assert [a for a in call if a.startswith("run_dir=")] == ["run_dir=/data/runs/s"]


@pytest.mark.parametrize("args", [["trainer.devices=8"], ["trainer.num_nodes=2"]])
def test_training_refuses_layout_overrides(tmp_path, args):
    result = run_train_script(tmp_path, args, SLURM_NTASKS="1")
    assert result.returncode == 2 and args[0] in result.stderr and not recorded(tmp_path)


def test_training_refuses_uneven_tasks_per_node(tmp_path):
    result = run_train_script(tmp_path, [], SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="3")
    assert result.returncode == 2 and "--ntasks-per-node" in result.stderr


# ------------------------------------------------------------------------- generation array
def run_generate(tmp_path: Path, task: int, args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = clean_env(
        tmp_path, SLURM_ARRAY_JOB_ID="90", SLURM_ARRAY_TASK_ID=str(task), SLURM_JOB_ID=str(90 + task), **env_extra
    )
    return subprocess.run(
        ["bash", str(SLURM / "generate.sbatch"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_generation_tasks_cover_the_seed_range_once(tmp_path):
    env = {"SEEDS_PER_TASK": "4", "SEED_START": "100", "SEED_COUNT": "10", "OUT_DIR": str(tmp_path / "out")}
    for task in range(4):
        result = run_generate(tmp_path, task, ["model=m.safetensors", "guidance.weight=2"], **env)
        assert result.returncode == 0, result.stderr
    calls = recorded(tmp_path)
    assert len(calls) == 3  # task 3 would start at seed 112, past the 10 seeds
    seeds = [next(a for a in c if a.startswith("seeds=")) for c in calls]
    assert seeds == ["seeds=100-103", "seeds=104-107", "seeds=108-109"]
    dirs = [next(a for a in c if a.startswith("output.dir=")) for c in calls]
    assert dirs == [f"output.dir={tmp_path}/out/seeds-{s.split('=')[1]}" for s in seeds]
    assert all(c[1:3] == ["-m", "autoguide.apps.generate"] and "model=m.safetensors" in c for c in calls)


def test_generation_resolves_model_folders(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "ema-000000002048-0.0500.safetensors").write_bytes(b"")
    result = run_generate(tmp_path, 0, [f"model={models}", "guide=g.safetensors"])
    assert result.returncode == 0, result.stderr
    [call] = recorded(tmp_path)
    assert f"model={models}/ema-000000002048-0.0500.safetensors" in call and "guide=g.safetensors" in call
    assert "output.dir=generated/90/seeds-0-999" in call


@pytest.mark.parametrize("arg", ["seeds=0-9", "output.dir=x"])
def test_generation_refuses_what_the_array_sets(tmp_path, arg):
    result = run_generate(tmp_path, 0, ["model=m", arg])
    assert result.returncode == 2 and arg in result.stderr and not recorded(tmp_path)


# ---------------------------------------------------------------------------- encoding array
def run_encode(tmp_path: Path, task: int, args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = clean_env(
        tmp_path, SLURM_ARRAY_JOB_ID="70", SLURM_ARRAY_TASK_ID=str(task), SLURM_JOB_ID=str(70 + task), **env_extra
    )
    return subprocess.run(
        ["bash", str(SLURM / "encode.sbatch"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_encoding_task_i_of_k_encodes_part_i(tmp_path):
    args = ["imagenet/train", "data/img512-latents", "--vae", "vae/sd-vae-ft-mse"]
    for task in range(3):
        assert run_encode(tmp_path, task, args, SLURM_ARRAY_TASK_COUNT="3").returncode == 0
    assert run_encode(tmp_path, 5, args, SLURM_ARRAY_TASK_COUNT="1", PARTS="8").returncode == 0  # one task rerun
    calls = recorded(tmp_path)
    assert [c[1:3] for c in calls] == [["-m", "autoguide.apps.encode"]] * 4 and all(c[3:7] == args for c in calls)
    assert [c[-3:] for c in calls] == [["--part", p, "--no-progress"] for p in ("0/3", "1/3", "2/3", "5/8")]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["src", "out", "--vae", "v", "--part", "0/2"], {}, "do not pass '--part'"),
        (["src"], {}, "usage: sbatch --array"),
        (["src", "out", "--vae", "v"], {"SLURM_ARRAY_TASK_COUNT": "2", "PARTS": "2"}, "outside PARTS=2"),
    ],
)
def test_encoding_refuses_bad_arrays(tmp_path, args, env, message):
    result = run_encode(tmp_path, 3, args, **env)
    assert result.returncode == 2 and message in result.stderr and not recorded(tmp_path)


# ------------------------------------------------------------------------------- the chain
def chain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SLURM / "chain.sh"), "--dry-run", *args],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def jobs_of(result: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """``{role: sbatch arguments}`` from the dry-run listing."""
    assert result.returncode == 0, result.stderr
    jobs = {}
    for line in result.stdout.splitlines():
        role, _, command = line.partition(": sbatch ")
        jobs[role] = command.split()
    return jobs


def option(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


BASE = ["--main", "experiment=toy2d-main seed=1", "--main-std", "0.05", "--guide-std", "0.1", "--weight", "2.5"]


def test_chain_job_graph(tmp_path):
    out = tmp_path / "ag"
    jobs = jobs_of(
        chain(
            tmp_path,
            "--out",
            str(out),
            *BASE,
            "--guide",
            "experiment=toy2d-guide",
            "--images",
            "10",
            "--images-per-task",
            "4",
            "--sbatch",
            "--account=me --job-name=mine",
            "--train-sbatch",
            "--gpus-per-node=8 --ntasks-per-node=8",
            "--generate",
            "output.formats=[npz]",
        )
    )
    assert list(jobs) == ["main", "guide", "reconstruct-main", "reconstruct-guide", "generate"]
    main, guide = jobs["main"], jobs["guide"]
    assert option(main, "dependency") is None and option(guide, "dependency") is None  # trained side by side
    assert main[-3:] == ["experiment=toy2d-main", "seed=1", f"run_dir={out}/main"]
    assert guide[-2:] == ["experiment=toy2d-guide", f"run_dir={out}/guide"]
    assert option(main, "ntasks-per-node") == "8" and option(main, "job-name") == "mine"  # the user's options win
    assert option(jobs["generate"], "ntasks-per-node") is None and all(
        option(j, "account") == "me" for j in jobs.values()
    )
    assert option(jobs["reconstruct-main"], "dependency") == "afterok:<main>"
    assert option(jobs["reconstruct-guide"], "dependency") == "afterok:<guide>"
    assert all(option(j, "kill-on-invalid-dep") == "yes" for j in jobs.values())  # a failed dependency cancels
    recon_guide = jobs["reconstruct-guide"]
    assert recon_guide[recon_guide.index(str(SLURM / "reconstruct.sbatch")) :] == [
        str(SLURM / "reconstruct.sbatch"),
        f"{out}/guide/phema",
        "--std",
        "0.1",
        "--out-dir",
        f"{out}/models/guide",
    ]
    generate = jobs["generate"]
    assert option(generate, "dependency") == "afterok:<reconstruct-main>:<reconstruct-guide>"
    assert option(generate, "array") == "0-2"  # ceil(10 / 4) tasks
    assert f"OUT_DIR={out}/generated" in option(generate, "export") and "SEED_COUNT=10" in option(generate, "export")
    assert generate[-5:] == [
        f"model={out}/models/main",
        f"guide={out}/models/guide",
        "guidance=autoguidance",
        "guidance.weight=2.5",
        "output.formats=[npz]",
    ]
    assert not out.exists()  # a dry run creates nothing


def test_chain_serial_guide_waits_for_the_main_run(tmp_path):
    jobs = jobs_of(chain(tmp_path, "--out", str(tmp_path), *BASE, "--guide", "experiment=toy2d-guide", "--serial"))
    assert option(jobs["guide"], "dependency") == "afterok:<main>"


def test_chain_guide_as_early_snapshot_of_the_main_run(tmp_path):
    jobs = jobs_of(chain(tmp_path, "--out", str(tmp_path), *BASE, "--guide-fraction", "1/16"))
    assert list(jobs) == ["main", "reconstruct-main", "reconstruct-guide", "generate"]
    recon = jobs["reconstruct-guide"]
    assert option(recon, "dependency") == "afterok:<main>"
    assert recon[recon.index("--std") :] == [
        "--std",
        "0.1",
        "--at-fraction",
        "1/16",
        "--out-dir",
        f"{tmp_path}/models/guide",
    ]
    assert f"{tmp_path}/main/phema" in recon


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--main", "experiment=toy2d-main"], "--out"),
        (["--out", "x", "--main", "experiment=a", "--guide", "experiment=b"], "--main-std"),
        (["--out", "x", *BASE], "exactly one of"),
        (["--out", "x", *BASE, "--guide", "g", "--guide-fraction", "1/16"], "exactly one of"),
        (["--out", "x", *BASE, "--guide-fraction", "1/16", "--serial"], "--serial"),
        (["--out", "x", *BASE, "--guide", "experiment=g run_dir=/elsewhere"], "run_dir"),
        (["--out", "x", *BASE, "--guide", "g", "--images", "0"], "--images"),
        (["--out", "x", *BASE, "--guide", "g", "--bogus"], "--bogus"),
    ],
)
def test_chain_rejects_bad_arguments(tmp_path, args, message):
    result = chain(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr and not result.stdout


# ----------------------------------------------------------------------- submitit launcher
def test_submitit_launcher_follows_the_trainer_layout():
    import_slurm_plugin("hydra_plugins.hydra_submitit_launcher")
    from autoguide.apps.config_tree import compose

    cfg = compose(
        "train", ["hydra/launcher=slurm", "experiment=toy2d-main", "trainer=ddp_cpu"], return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.nodes) == (2, 1)
    assert launcher.signal_delay_s >= 60 and launcher.additional_parameters.requeue is True
    [setup] = OmegaConf.to_container(launcher.setup, resolve=True)
    assert setup.startswith("source ") and setup.endswith("/slurm/common.sh")


# -------------------------------------------------------------------------- evaluation array
def run_eval(tmp_path: Path, task: int, count: int, args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    array = {
        "SLURM_ARRAY_JOB_ID": "80",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_COUNT": str(count),
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": str(count - 1),
        "SLURM_JOB_ID": str(80 + task),
    }
    env = clean_env(tmp_path, **{**array, **env_extra})
    return subprocess.run(
        ["bash", str(SLURM / "eval.sbatch"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_eval_tasks_are_the_shard_workers(tmp_path):
    for task in range(3):
        result = run_eval(tmp_path, task, 3, ["protocol=edm2", "model=m.safetensors"], OUT_DIR=str(tmp_path / "out"))
        assert result.returncode == 0, result.stderr
    calls = recorded(tmp_path)
    assert [c[1:3] for c in calls] == [["-m", "autoguide.apps.evaluate"]] * 3
    for task, call in enumerate(calls):
        assert call[3:] == [
            "protocol=edm2",
            "model=m.safetensors",
            f"output.dir={tmp_path}/out",
            f"shards.worker={task}",
            "shards.workers=3",
        ]


def test_eval_passes_the_shard_size_of_the_environment(tmp_path):
    assert run_eval(tmp_path, 0, 1, ["model=m"], OUT_DIR="o", SHARD_IMAGES="50").returncode == 0
    [call] = recorded(tmp_path)
    assert "shards.images=50" in call


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["model=m", "output.dir=x"], {"OUT_DIR": "o"}, "output.dir=x"),
        (["model=m", "shards.worker=1"], {"OUT_DIR": "o"}, "shards.worker=1"),
        (["model=m"], {}, "set OUT_DIR"),
        (["model=m"], {"OUT_DIR": "o", "SLURM_ARRAY_TASK_MIN": "1"}, "--array must be 0-<N-1>"),
    ],
)
def test_eval_refuses_what_the_array_sets(tmp_path, args, env, message):
    result = run_eval(tmp_path, 1, 2, args, **env)
    assert result.returncode == 2 and message in result.stderr and not recorded(tmp_path)


# ------------------------------------------------------------------------------ search.sbatch
def run_search(tmp_path: Path, task: int, args: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = clean_env(
        tmp_path, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_JOB_ID="90", SLURM_JOB_ID=str(90 + task), **env_extra
    )
    return subprocess.run(
        ["bash", str(SLURM / "search.sbatch"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_search_tasks_are_workers_of_one_journal_study(tmp_path):
    out = tmp_path / "out"
    for task in range(2):
        assert run_search(tmp_path, task, ["main.run=r", "search.budget=100"], OUT_DIR=str(out)).returncode == 0
    calls = recorded(tmp_path)
    for task, call in enumerate(calls):
        assert call[1:] == [
            "-m",
            "autoguide.apps.sweep",
            "search=tpe",
            "main.run=r",
            "search.budget=100",
            f"search.storage=journal:{out}/study.log",
            f"output.dir={out}",
            f"search.worker={task}",
        ]


def test_search_keeps_the_sampler_and_storage_given(tmp_path):
    args = ["search=gp", "search.storage=sqlite:///db.sqlite", "search.budget=100"]
    assert run_search(tmp_path, 0, args, OUT_DIR="o").returncode == 0
    [call] = recorded(tmp_path)
    assert call[3:] == [*args, "output.dir=o", "search.worker=0"]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["output.dir=x"], {"OUT_DIR": "o"}, "output.dir=x"),
        (["search.worker=3"], {"OUT_DIR": "o"}, "search.worker=3"),
        ([], {}, "set OUT_DIR"),
    ],
)
def test_search_refuses_what_the_array_sets(tmp_path, args, env, message):
    result = run_search(tmp_path, 1, args, **env)
    assert result.returncode == 2 and message in result.stderr and not recorded(tmp_path)
