"""End to end: autoguide-sims on MNIST-5k with a tiny network, a fine-tune that is killed and
resumed, and guided sampling with the registered SIMS negative through autoguide-generate."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tiny import TINY_MNIST_UNET

from autoguide.apps import generate as generate_cli
from autoguide.apps.config_tree import compose
from autoguide.apps.sims import sims_settings
from autoguide.core.typed_settings import ConfigError
from autoguide.data.mnist import MNIST5k
from autoguide.data.shards import IndexedShardDataset
from autoguide.ema.snapshots import Snapshot, snapshot_filename, write_index
from autoguide.io import read_card, read_model_file, save_model
from autoguide.io.sims_pair import read_pair
from autoguide.nets import build_network, network_config
from autoguide.sims.pipeline import run_sims
from autoguide.sims.sims_settings import SimsSettings
from autoguide.sims.synthesize import verify_manifest

NET = TINY_MNIST_UNET
BASE_NIMG = 32000
CRASH = '''
import os
from pathlib import Path
import lightning.pytorch as pl

class CrashOnce(pl.Callback):
    """Kill the training process (no cleanup, like SIGKILL) the first time nimg passes `after`."""
    def __init__(self, after, marker):
        self.after, self.marker = after, Path(marker)
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.nimg > self.after and not self.marker.exists():
            self.marker.touch()
            os._exit(3)
'''


def make_base_run(folder: Path) -> None:
    """A training run folder as autoguide-train leaves it: config, overrides, EMA snapshots."""
    torch.manual_seed(0)
    net = build_network(NET)
    entries = []
    for nimg in (BASE_NIMG // 2, BASE_NIMG):
        for std in (0.05, 0.10):
            path = folder / "phema" / snapshot_filename(nimg, std)
            save_model(path, net, {"network": NET, "nimg": nimg, "ema_std": std, "source": "test"})
            entries.append(Snapshot(path, nimg, std))
    write_index(
        folder / "phema",
        NET,
        ["unet.emb_fourier.freqs", "unet.emb_fourier.phases", "logvar_fourier.freqs", "logvar_fourier.phases"],
        entries,
    )
    recipe = ["train.batch_size=16", "train.lr_ref=0.01", "train.lr_ref_batches=1000", "train.lr_rampup_mi=0.01"]
    config = {
        "name": "tiny",
        "train": OmegaConf.to_container(compose("train", ["experiment=mnist-xs-guide", *recipe]).train, resolve=True),
        "data": {"name": "mnist5k", "split": "test", "channels": 1, "conditional": True, "seed": 0, "num_workers": 0},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "logs" / "hydra").mkdir(parents=True)
    overrides = [
        "experiment=mnist-xs-guide",
        "logger=none",
        "train.batch_size=16",
        f"run_dir={folder}",
        "data.split=test",
    ]
    (folder / "logs" / "hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def compose_training(overrides):
    return compose("train", overrides)


def sims_config(out: Path, base_run: Path, crash: Path) -> SimsSettings:
    overrides = [
        f"out_dir={out}",
        f"base_run={base_run}",
        "budget_mi=[0.00006103515625,0.0001220703125]",  # 64 and 128 images
        "synthesize.num_images=24",
        "synthesize.real_fraction=0.25",
        "synthesize.shard_size=16",
        "synthesize.class_labels=[0,1,2,3,4,5,6,7,8,9]",
        "synthesize.sampler.num_steps=3",
        "device=cpu",
        "register.weight_space=[1.0]",
        'retrain.overrides=["logger=none","data.num_workers=0","~callbacks.sample_grid","~callbacks.progress_bar",'
        f'"+callbacks.crash._target_=sims_crash.CrashOnce","+callbacks.crash.after=64","+callbacks.crash.marker={crash}"]',
    ]
    return sims_settings(compose("sims", overrides))


def test_sims_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "sims_crash.py").write_text(textwrap.dedent(CRASH))
    make_base_run(tmp_path / "base_run")
    out = tmp_path / "sims"
    cfg = sims_config(out, tmp_path / "base_run", tmp_path / "crashed")

    # First run: base and synthesize complete, the fine-tune is killed after its first checkpoint.
    with pytest.raises(RuntimeError, match="exited with status 3"):
        run_sims(cfg, compose_training)
    run = out / "iter-00" / "retrain"
    assert (out / "base" / "stage.json").exists() and (out / "iter-00" / "synthesize" / "stage.json").exists()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["nimg-000000000064.ckpt", "nimg-000000000064.ckpt.sha256"]
    assert not (run / "stage.json").exists()
    stamps = {
        p: p.stat().st_mtime_ns
        for p in [*(out / "base").iterdir(), *(out / "iter-00" / "synthesize" / "shards").iterdir()]
    }

    # Second run (same command): resumes in the retrain stage, from the checkpoint.
    summary = run_sims(cfg, compose_training)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished stages were not redone
    assert (
        "resuming from" in (run / "logs" / "train.log").read_text()
        and "nimg-000000000064.ckpt" in (run / "logs" / "train.log").read_text()
    )

    # base: the post-hoc EMA reconstruction at the run's last snapshot
    base = out / "base" / "ema-000000032000-0.1000.safetensors"
    assert summary["base"] == str(base) and read_card(base)["nimg"] == BASE_NIMG

    # synthesize: 18 synthetic + 6 real images, shards as the manifest says
    synth = out / "iter-00" / "synthesize"
    manifest = verify_manifest(synth)
    assert (manifest["count"], manifest["num_synthetic"], manifest["num_real"]) == (24, 18, 6)
    assert [(s["file"], s["count"]) for s in manifest["shards"]] == [
        ("shards/synth-000000.tar", 16),
        ("shards/synth-000001.tar", 2),
        ("shards/real-000000.tar", 6),
    ]
    assert (
        manifest["source_model"]["sha256"]
        == json.loads((out / "base" / "stage.json").read_text())["outputs"][base.name]["sha256"]
    )
    labels = [
        IndexedShardDataset(str(synth / s["file"]))[i][1] for s in manifest["shards"][:2] for i in range(s["count"])
    ]
    assert labels == [i % 10 for i in range(18)]
    real = MNIST5k("test")
    picked = np.random.RandomState(0).permutation(len(real))[:6]
    stored = IndexedShardDataset(str(synth / "shards" / "real-000000.tar"))
    assert all(torch.equal(stored[j][0], real[i][0]) and stored[j][1] == int(real[i][1]) for j, i in enumerate(picked))

    # retrain: trained from the base weights on the shards, at the base run's final learning rate
    trained = yaml.safe_load((run / "config.yaml").read_text())
    assert trained["data"]["path"] == str(synth / "shards") and trained["train"]["batch_size"] == 16
    assert trained["train"]["lr_ref"] == pytest.approx(0.01 / math.sqrt(BASE_NIMG / (1000 * 16)))
    assert (trained["train"]["lr_ref_batches"], trained["train"]["lr_rampup_mi"]) == (0, 0)

    # register: one pair per budget, the negative at that budget, close to the base it started from
    base_state, _ = read_model_file(base)
    pairs = summary["iterations"][0]["pairs"]
    assert [Path(p).parent.name for p in pairs] == ["b000000000064-std0.1000", "b000000000128-std0.1000"]
    for path, budget in zip(pairs, (64, 128), strict=True):
        pair = read_pair(path, check_hashes=True)
        assert pair.positive == base and pair.budget_nimg == budget and set(pair.weight_space) == {1.0}
        card = read_card(pair.negative)
        assert (card["nimg"], card["ema_std"], card["sims"]["budget_nimg"], network_config(card["network"])) == (
            budget,
            0.1,
            budget,
            network_config(NET),
        )
        negative, _ = read_model_file(pair.negative)
        change = sum((negative[k] - base_state[k]).norm() ** 2 for k in base_state) ** 0.5
        size = sum(base_state[k].norm() ** 2 for k in base_state) ** 0.5
        assert 0 < change < 0.2 * size  # fine-tuned from the base, not from a fresh initialisation

    # guided sampling with the SIMS negative, through autoguide-generate and pair.json's overrides
    pair = read_pair(pairs[-1])
    for name, overrides in (
        ("sims", pair.generate_overrides(1.5)),
        ("weightspace", [f"model={pair.weight_space[1.0]}"]),
    ):
        folder = tmp_path / "samples" / name
        gen = compose(
            "generate",
            [
                *overrides,
                "seeds=0-3",
                "sampler.num_steps=3",
                "device=cpu",
                "output.formats=[npz]",
                f"output.dir={folder}",
                "progress=false",
            ],
        )
        generate_cli.run(gen)
        images = np.load(folder / "samples.npz")["images"]
        assert images.shape == (4, 32, 32, 1)
    cards = json.loads((tmp_path / "samples" / "sims" / "model_cards.json").read_text())
    assert cards[str(pair.negative)]["sims"]["budget_nimg"] == 128


def test_cli_records_the_base_and_refuses_other_inputs(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        save_model(tmp_path / f"{name}.safetensors", build_network(NET), {"network": NET, "nimg": 10})

    def cli(*overrides):
        command = [
            sys.executable,
            "-m",
            "autoguide.apps.sims",
            f"out_dir={tmp_path / 'sims'}",
            "budget_mi=1",
            "stop_after=base",
            *overrides,
        ]
        return subprocess.run(command, capture_output=True, text=True)

    assert cli(f"base={tmp_path / 'a.safetensors'}").returncode == 0
    record = json.loads((tmp_path / "sims" / "base" / "stage.json").read_text())
    assert record["info"]["model"] == str(tmp_path / "a.safetensors") and record["outputs"] == {}
    refused = cli(f"base={tmp_path / 'b.safetensors'}")
    assert (
        refused.returncode == 2
        and "base stage was started with other inputs" in refused.stderr
        and "model (" in refused.stderr
    )
    assert (
        "Missing mandatory value: budget_mi"
        in subprocess.run(
            [sys.executable, "-m", "autoguide.apps.sims", f"out_dir={tmp_path / 'x'}"], capture_output=True, text=True
        ).stderr
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stop_after=sample"], r"^stop_after='sample': expected one of \['base', 'synthesize'"),
        (["iterations=2", "iteration=2"], r"^iteration=2: expected 0 <= iteration < iterations=2$"),
        (["budget_mi=[0.5,-1]"], r"^budget_mi=\[0\.5, -1\]: expected positive numbers"),
        (["synthesize.num_tasks=2", "synthesize.task=2"], r"^synthesize\.task=2: expected 0 <= task < num_tasks=2$"),
        (["register.ema_stds=[]"], r"^register\.ema_stds is empty"),
        (["real_data=mnist5k"], r"^real_data='mnist5k': expected a dataset config"),
    ],
)
def test_sims_settings_refuse_bad_values_naming_the_key(tmp_path, overrides, message):
    cfg = compose("sims", [f"out_dir={tmp_path}", "budget_mi=1", *overrides])
    with pytest.raises(ConfigError, match=message):
        sims_settings(cfg)


def test_sims_schema_refuses_unknown_keys_at_composition(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"retrain.lr_typo"):
        compose("sims", [f"out_dir={tmp_path}", "budget_mi=1", "retrain.lr_typo=0.1"])
    settings = sims_settings(
        compose("sims", [f"out_dir={tmp_path}", "budget_mi=[0.5,0.25]", "synthesize.sampler.num_steps=3"])
    )
    assert settings.budgets == (2**18, 2**19) and settings.synthesize.sampler.num_steps == 3
    assert settings.stop_point == (0, 3)
