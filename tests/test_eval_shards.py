"""Sharded, resumable evaluation (``autoguide.eval.shards``) on a tiny MNIST model: two SLURM-style
array tasks and two torchrun ranks (gloo) each give one process's result; a shard of another
configuration is refused by name; a run killed with SIGKILL during a shard, rerun, gives the same
result without recomputing its finished shards; on a real SLURM cluster (marked ``slurm``),
``slurm/eval.sbatch`` with 2 array tasks gives one process's result."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from autoguide.apps.config_tree import compose as compose_config
from autoguide.apps.evaluate import run
from autoguide.core.typed_settings import ConfigError
from autoguide.eval import read_statistics
from autoguide.eval.shards import ShardError
from tests.test_eval_evaluate import MNIST_NET, save_net, save_untrained_classifier
from tests.test_slurm_cluster import (  # noqa: F401 (cluster: a fixture)
    CPU_JOB,
    SLURM,
    cluster,
    job_env,
    sbatch,
    wait_finished,
)

pytestmark = pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")

SHARDS = 8  # 2 seed sets x 32 images in shards of 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    save_net(root / "mnist.safetensors", MNIST_NET)
    torch.manual_seed(1)
    save_untrained_classifier(root / "clf.safetensors", 24)
    return root


def overrides(root, out, *extra):
    """32 images per seed set, 2 sets, shards of 8; precision/recall on the first 20 images of a set
    (a bounded sample that ends inside a shard)."""
    return [
        f"model={root / 'mnist.safetensors'}",
        "sampler.num_steps=2",
        "seeds=0-31",
        "seed_sets=2",
        "shards.images=8",
        "chunk_images=5",
        "device=cpu",
        f"output.dir={out}",
        f"cache_dir={root / 'cache'}",
        "preview_images=0",
        f"extractors.mnist.path={root / 'clf.safetensors'}",
        "metrics.reference.split=test",
        "metrics.max_reference_features=20",
        *extra,
    ]


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
    return run(compose_config("eval", overrides(setup, tmp_path_factory.mktemp("one"))))


def assert_same_result(report, expected):
    for index, s in enumerate(expected["sets"]):
        got = report["sets"][index]["metrics"]
        assert set(got) == set(s["metrics"]) == {"fd_mnist", "precision_mnist", "recall_mnist"}
        for metric, value in s["metrics"].items():
            assert got[metric] == pytest.approx(value, rel=1e-12, abs=1e-12), metric
    for key in ("metrics", "mean", "min", "std"):
        assert report[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12)


def test_edm2_protocol_config(setup):
    cfg = compose_config("eval", ["protocol=edm2", "model=m.safetensors", "metrics.reference=refs/img512.pkl"])
    assert (cfg.seeds, cfg.seed_sets, cfg.class_labels, cfg.shards.images) == ("0-49999", 3, "random", 2500)
    assert (
        cfg.sampler.solver,
        cfg.sampler.num_steps,
        cfg.sampler.sigma_min,
        cfg.sampler.sigma_max,
        cfg.sampler.rho,
    ) == ("heun", 32, 0.002, 80.0, 7.0)
    assert list(cfg.metrics.features) == ["inception", "dinov2"] and cfg.metrics.reference == "refs/img512.pkl"
    with pytest.raises(ValueError, match=r"metrics.reference: the features .* need a statistics file"):
        run(
            compose_config(
                "eval",
                [
                    "protocol=edm2",
                    f"model={setup / 'mnist.safetensors'}",
                    "metrics.features=[mnist]",
                    f"extractors.mnist.path={setup / 'clf.safetensors'}",
                    "device=cpu",
                ],
            )
        )


def test_one_process_measures_every_shard_and_matches_the_in_memory_evaluation(setup, one_process, tmp_path):
    assert one_process["shards"]["count"] == SHARDS and len(one_process["shards"]["computed"]) == SHARDS
    reference = read_statistics(one_process["reference_statistics"])["fd_mnist"]  # the dataset's, in EDM2's layout
    cached = np.load(one_process["feature_networks"]["mnist"]["reference"])
    np.testing.assert_array_equal(reference["mu"], cached["mu"])
    np.testing.assert_array_equal(reference["sigma"], cached["sigma"])
    assert [s["seeds"] for s in one_process["sets"]] == ["0-31", "32-63"]
    memory = run(compose_config("eval", overrides(setup, tmp_path, "shards.images=null")))
    for sharded, direct in zip(one_process["sets"], memory["sets"], strict=True):
        assert sharded["metrics"] == pytest.approx(direct["metrics"], rel=1e-6)
    values = [s["metrics"]["fd_mnist"] for s in one_process["sets"]]
    assert one_process["min"]["fd_mnist"] == min(values) and one_process["std"]["fd_mnist"] == pytest.approx(
        np.std(values, ddof=1)
    )


def test_two_array_tasks_equal_one_process(setup, one_process, tmp_path):
    first = run(compose_config("eval", overrides(setup, tmp_path, "shards.worker=0", "shards.workers=2")))
    assert first is None and not (tmp_path / "metrics.json").exists()  # task 1's shards are missing: no merge yet
    second = run(compose_config("eval", overrides(setup, tmp_path, "shards.worker=1", "shards.workers=2")))
    assert second["shards"]["computed"] == [f"set1-{s:07d}-{s + 7:07d}" for s in (0, 8, 16, 24)]
    assert_same_result(second, one_process)
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == second["metrics"]


def test_a_shard_of_another_configuration_is_refused_by_name(setup, one_process, tmp_path):
    run(compose_config("eval", overrides(setup, tmp_path, "shards.worker=0", "shards.workers=2")))
    with pytest.raises(
        ShardError,
        match=r"set0-0000000-0000007\.npz: this shard was made by another evaluation \(differing keys: sampler\)",
    ):
        run(compose_config("eval", overrides(setup, tmp_path, "sampler.num_steps=3")))


def test_array_workers_need_a_shard_size(setup, tmp_path):
    with pytest.raises(ConfigError, match=r"set shards.images"):
        run(
            compose_config(
                "eval", overrides(setup, tmp_path, "shards.images=null", "shards.worker=0", "shards.workers=2")
            )
        )


def clean_env():
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))
    }
    return {**env, "OMP_NUM_THREADS": "1"}


def test_two_torchrun_ranks_equal_one_process(setup, one_process, tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "autoguide.apps.evaluate",
        *overrides(setup, tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=clean_env(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    workers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"worker"')]
    assert sorted(w["worker"] for w in workers) == ["0/2", "1/2"] and sum(len(w["computed"]) for w in workers) == SHARDS
    assert_same_result(json.loads((tmp_path / "metrics.json").read_text()), one_process)


def test_sigkill_during_a_shard_then_rerun_gives_the_same_result(setup, one_process, tmp_path):
    command = [sys.executable, "-m", "autoguide.apps.evaluate", *overrides(setup, tmp_path, "sampler.num_steps=2")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    shards = tmp_path / "shards"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and not list(shards.glob("set*.npz")):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("set*.npz")}
    assert 1 <= len(finished) < SHARDS, "the kill must land between the first and the last shard"
    report = run(compose_config("eval", overrides(setup, tmp_path)))
    assert sorted(f"{name}.npz" for name in report["shards"]["reused"]) == sorted(finished)
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("set*.npz") if p.name in finished} == finished
    assert len(report["shards"]["computed"]) == SHARDS - len(finished)
    assert_same_result(report, one_process)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures("cluster")
def test_slurm_array_tasks_equal_one_process(setup, one_process, tmp_path):
    """slurm/eval.sbatch on the real cluster: 2 array tasks share the shards, the last merges."""
    out = tmp_path / "out"
    args = [a for a in overrides(setup, out) if not a.startswith("output.dir=")]
    job = sbatch(
        ["--array=0-1", *CPU_JOB, f"--output={tmp_path}/slurm-%A_%a.out", str(SLURM / "eval.sbatch"), *args],
        job_env(tmp_path, OUT_DIR=str(out)),
        tmp_path,
    )
    infos = wait_finished(job, 600)
    logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("slurm-*.out"))
    assert len(infos) == 2 and all(i["JobState"] == "COMPLETED" for i in infos), logs
    assert_same_result(json.loads((out / "metrics.json").read_text()), one_process)
