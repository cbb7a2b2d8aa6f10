"""Bad training configs fail before training with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from autoguide.apps.config_tree import compose, config_dir
from autoguide.apps.hydra_app import check_group_choices
from autoguide.core.typed_settings import ConfigError
from autoguide.train.run import train
from autoguide.train.run_config import read_train_config

REPO = Path(__file__).resolve().parents[1]


def make_config(overrides: list[str]):
    return compose("train", overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.duration_mi=-1"], r"^train\.duration_mi=-1(\.0)?: expected a positive number$"),
        (["train.duration_fraction=0"], r"^train\.duration_fraction=0"),
        (["train.batch_size=0"], r"^train\.batch_size=0"),
        (["train.batch_size=64", "train.micro_batch=24"], r"^train\.micro_batch=24 does not divide"),
        (["trainer=ddp_cpu", "train.batch_size=63"], r"^train\.batch_size=63 is not divisible by the world size 2"),
        (["train.P_std=0"], r"^train\.P_std=0"),
        (["train.cond_drop_prob=1.0"], r"^train\.cond_drop_prob=1\.0"),
        (["train.loss_weighting=fixed"], r"^train\.loss_weighting='fixed': expected one of \['learned', 'edm'\]"),
        (["train.optimizer.name=Adamm"], r"^train\.optimizer\.name='Adamm': expected a torch\.optim optimizer class"),
        (
            ["train.optimizer.name=SGD", "train.optimizer.kwargs={betas: [0.9, 0.9]}"],
            r"^train\.optimizer\.kwargs \['betas'\] do not fit torch\.optim\.SGD",
        ),
        (
            ["+train.optimizer.kwargs.lr=0.1"],
            r"^train\.optimizer\.kwargs\.lr: the learning rate comes from train\.lr_ref",
        ),
        (["train.target=clean"], r"^train\.target='clean': expected one of \['data', 'exact'\]$"),
        (
            ["train.target=exact"],
            r"^train\.target=exact needs a dataset whose distribution is known in closed form \(toy2d\); "
            r"data 'mnist5k' has no exact denoiser$",
        ),
        (["train.sample_kimg=0"], r"^train\.sample_kimg=0"),
        (["+trainer.max_epochs=3"], r"^trainer\.max_epochs is derived by autoguide; set train\.duration_mi"),
        (
            ["trainer.precision=16-mixed"],
            r"^trainer\.precision='16-mixed': expected one of \['32-true', '32', 'bf16-mixed'\]",
        ),
        (["net.img_resolution=30"], r"^net: .*img_resolution=30"),
        (["net.img_resolution=64"], r"^net\.img_resolution=64 does not match data 'mnist5k', which has 32x32 images$"),
        (["net=img64-xs"], r"^net\.img_resolution=64 does not match data 'mnist5k'"),
        (["net.img_channels=3"], r"^net\.img_channels=3 does not match data 'mnist5k', which has 1 channels$"),
        (["net.label_dim=5"], r"^net\.label_dim=5 does not match data 'mnist5k', which feeds 10 label classes"),
        (["net.label_dim=0"], r"^net\.label_dim=0 does not match .*set data\.conditional=false"),
        (
            ["net.label_dim=0", "data.conditional=false", "train.cond_drop_prob=0.1"],
            r"^train\.cond_drop_prob=0\.1 needs a conditional network",
        ),
        (
            ["experiment=toy2d-main", "net=mnist-xs"],
            r"^net\.img_resolution=32 does not match data 'toy2d', which has 2D points$",
        ),
        (["experiment=mnist-s", "net=toy-mlp"], r"^net\.arch='mlp' takes vectors"),
        (["data.split=nope"], r"^data: "),
        (["resume=/no/such/file.ckpt"], r"^resume=/no/such/file\.ckpt: no such checkpoint file$"),
        (["~experiment"], r"^name is not set"),
        (["experiment=toy2d-main", "net.width=0"], r"^net\.width=0: expected a positive integer$"),
        (["experiment=toy2d-main", "net.depth=-1"], r"^net\.depth=-1: expected an integer >= 0$"),
        (["callbacks.phema.stds=[5.0]"], r"^callbacks\.phema\.stds=\[5\.0\]: each EMA std must lie in \(0, 0\.3003\]$"),
        (["seed=x"], r"^seed='x': expected an integer >= 0$"),
        (["train.max_nonfinite_steps=-1"], r"^train\.max_nonfinite_steps=-1: expected an integer >= 0"),
        (["resume_changed=maybe"], r"^resume_changed='maybe': expected true or false$"),
    ],
)
def test_config_error_names_the_key(tmp_path, overrides, message):
    cfg = make_config([*overrides, f"run_dir={tmp_path / 'run'}", "logger=none"])
    with pytest.raises(ConfigError, match=message) as info:
        train(read_train_config(cfg))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists(), "training started"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_trainer_without_a_gpu_is_one_line(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^trainer\.accelerator=gpu: no CUDA GPU is visible on this machine; use trainer=cpu$"
    ):
        train(read_train_config(make_config(["trainer=gpu", f"run_dir={tmp_path / 'run'}", "logger=none"])))


def test_run_dir_that_is_a_file_and_resume_from_a_text_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^run_dir=.*/file: run_dir is a file, expected a folder"):
        train(read_train_config(make_config([f"run_dir={tmp_path / 'file'}", "logger=none"])))
    with pytest.raises(ConfigError, match=r"^run_dir=.*/file/run: the folder .*/file above run_dir is a file"):
        train(read_train_config(make_config([f"paths.runs_dir={tmp_path / 'file'}", "name=run", "logger=none"])))
    with pytest.raises(ConfigError, match=r"^resume=.*/file: not a checkpoint \(expected a \.ckpt"):
        train(
            read_train_config(
                make_config([f"run_dir={tmp_path / 'run'}", f"resume={tmp_path / 'file'}", "logger=none"])
            )
        )


def test_unknown_preset_is_caught_before_hydra():
    with pytest.raises(ConfigError, match=r"^net=nope: no such option in .*conf/net; choose one of .*mnist-s"):
        check_group_choices(["train.batch_size=8", "net=nope"], config_dir())
    with pytest.raises(ConfigError, match=r"^experiment=nope"):
        check_group_choices(["experiment=mnist-s,nope"], config_dir())
    check_group_choices(["net=mnist-xs", "debug=null", "net.label_dim=3", "hydra.run.dir=x", "+foo=1"], config_dir())
    with pytest.raises(MissingConfigException, match="net/nope"):  # compose API: Hydra's own error
        make_config(["net=nope"])


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["train.duration_mi=-0.5"], "config error: train.duration_mi=-0.5: expected a positive number"),
        (["net=mnist-q"], "config error: net=mnist-q: no such option in "),
        (
            ["train.lr_reff=0.1"],
            "config error: Could not override 'train.lr_reff': Key 'lr_reff' not in 'TrainSettings'; ",
        ),
        (["experiment=toy2d-main", "net.label_dim=3"], "config error: net.label_dim=3 does not match data 'toy2d'"),
    ],
)
def test_command_line_prints_one_line_and_exits_2(tmp_path, args, line):
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, "logger=none", f"run_dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert not (tmp_path / "run" / "logs").exists() and not (tmp_path / "run" / "config.yaml").exists(), (
        "a refused run wrote"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["train.batch_size=abc"],
            r"^Error merging override train\.batch_size=abc: "
            r"Value 'abc' of type 'str' could not be converted to Integer$",
        ),
        (["+trainer.foo=1", "seed=[1"], r"^no viable alternative at input '\[1'; See https://hydra\.cc"),
    ],
)
def test_composition_errors_are_one_line(args, line):
    from autoguide.apps.hydra_app import compose_or_refuse

    with pytest.raises(ConfigError, match=line):
        compose_or_refuse("train", args)
    assert compose_or_refuse("train", ["-m", "seed=1,2"]) is None  # a multirun composes per point
