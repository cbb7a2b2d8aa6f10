"""SIMS retrain stage: budgets, the fine-tune's training config (composed and checked against the
real training config tree), weight initialisation from a model file, snapshot checks."""

import pytest
import torch
from omegaconf import OmegaConf
from tiny import TINY_MNIST_UNET

from autoguide.apps.config_tree import compose
from autoguide.core.typed_settings import ConfigError
from autoguide.ema.snapshots import Snapshot, write_index
from autoguide.io import save_model
from autoguide.nets import build_network, config_dict, network_config
from autoguide.sims.init_callback import InitFromModel
from autoguide.sims.retrain import (
    RetrainSettings,
    carried_base_overrides,
    check_snapshots,
    fine_tune_config,
)
from autoguide.sims.sims_settings import budgets_from_mi
from autoguide.train.module import DiffusionModule
from autoguide.train.recipe import RunSettings, TrainSettings

NET = TINY_MNIST_UNET


def compose_training(overrides):
    return compose("train", overrides)


def test_budgets_and_snapshot_interval():
    assert budgets_from_mi([2**-12, 2**-13, 2**-12]) == (128, 256)
    assert budgets_from_mi(0.5) == (2**19,)
    assert RetrainSettings(budgets=(768, 1024, 2048), lr=1e-3).snapshot_nimg == 256
    with pytest.raises(ValueError, match="budget_mi"):
        budgets_from_mi([0.1, -1])
    with pytest.raises(ValueError, match=r"retrain.lr"):
        RetrainSettings(budgets=(64,), lr=0.0)
    for bad in ("data=folder", "++run_dir=x", "net.model_channels=4", "+callbacks.init_from.path=m", "train.lr_ref=1"):
        with pytest.raises(ValueError, match="SIMS manages"):
            RetrainSettings(budgets=(64,), lr=1e-3, overrides=(bad,))
    RetrainSettings(budgets=(64,), lr=1e-3, overrides=("data.num_workers=0", "trainer=gpu"))


def test_base_overrides_carried():
    base = [
        "experiment=mnist-s",
        "net=mnist-xs",
        "net.model_channels=8",
        "data.split=train",
        "data=mnist5k",
        "run_dir=/runs/s",
        "name=s",
        "hydra.run.dir=/x",
        "hydra/job_logging=disabled",
        "trainer=gpu",
        "train.batch_size=16",
        "++train.lr_ref=0.02",
    ]
    assert carried_base_overrides(base) == ["experiment=mnist-s", "net=mnist-xs", "trainer=gpu", "train.batch_size=16"]


def test_overrides_compose_to_the_fine_tune_config(tmp_path):
    settings = RetrainSettings(
        budgets=(128, 384),
        lr=0.00123,
        ema_stds=(0.05, 0.2),
        overrides=(
            "logger=none",
            "data.num_workers=0",
            "train.optimizer.name=SGD",
            "train.optimizer.kwargs={momentum: 0.5}",
        ),
    )
    model = tmp_path / "my model=1.safetensors"  # a path the override grammar must quote
    cfg = fine_tune_config(
        compose_training,
        tmp_path / "run",
        "s-sims0",
        model,
        NET,
        tmp_path / "shards",
        settings,
        ["experiment=mnist-xs-guide", "train.batch_size=16", "run_dir=/elsewhere", "data.split=train"],
    )
    assert OmegaConf.to_container(cfg.net) == config_dict(NET)
    assert cfg.run_dir == str(tmp_path / "run") and cfg.name == "s-sims0" and cfg.resume == "auto"
    assert cfg.data.name == "shards" and cfg.data.path == str(tmp_path / "shards") and cfg.data.conditional is True
    assert cfg.data.num_workers == 0 and "split" not in cfg.data
    assert cfg.train.batch_size == 16
    assert cfg.train.optimizer.name == "SGD" and dict(cfg.train.optimizer.kwargs) == {"momentum": 0.5}
    assert cfg.train.target == "data"
    assert cfg.train.duration_mi * 2**20 * cfg.train.duration_fraction == 384
    assert (cfg.train.lr_ref, cfg.train.lr_ref_batches, cfg.train.lr_rampup_mi) == (0.00123, 0, 0)
    assert round(cfg.train.snapshot_kimg * 1000) == 128 and round(cfg.train.checkpoint_kimg * 1000) == 128
    assert list(cfg.callbacks.phema.stds) == [0.05, 0.2] and cfg.callbacks.phema.out_dir == str(
        tmp_path / "run" / "phema"
    )
    assert cfg.callbacks.init_from.path == str(model) and list(cfg.callbacks.init_from.budgets) == [128, 384]
    assert cfg.callbacks.init_from._target_ == "autoguide.sims.init_callback.InitFromModel"
    assert dict(cfg.logger) == {}


def test_init_from_model_loads_the_weights(tmp_path):
    torch.manual_seed(1)
    source = build_network(NET)
    save_model(tmp_path / "m.safetensors", source, {"network": NET})
    recipe = TrainSettings(
        batch_size=4,
        duration_mi=1,
        lr_ref=1e-3,
        lr_ref_batches=0,
        P_mean=-0.8,
        P_std=1.6,
        log_kimg=1,
        checkpoint_kimg=1,
        sample_kimg=1,
        snapshot_kimg=1,
    )
    module = DiffusionModule(RunSettings(network_config(NET), recipe, seed=7))
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    InitFromModel(str(tmp_path / "m.safetensors")).setup(None, module, "validate")  # only at fit
    assert all(torch.equal(before[k], v) for k, v in module.net.state_dict().items())
    InitFromModel(str(tmp_path / "m.safetensors")).setup(None, module, "fit")
    for key, value in source.state_dict().items():
        assert torch.equal(module.net.state_dict()[key], value), key
    assert not torch.equal(before["unet.out_conv.weight"], module.net.state_dict()["unet.out_conv.weight"])
    other = DiffusionModule(RunSettings(network_config({**NET, "model_channels": 16}), recipe))
    with pytest.raises(ValueError, match="differs from the training config"):
        InitFromModel(str(tmp_path / "m.safetensors")).setup(None, other, "fit")
    InitFromModel(str(tmp_path / "m.safetensors"), budgets=[8, 16]).setup(None, module, "fit")  # batch 4 divides both
    with pytest.raises(ValueError, match=r"budgets \[10\] .* not multiples of train.batch_size=4"):
        InitFromModel(str(tmp_path / "m.safetensors"), budgets=[8, 10]).setup(None, module, "fit")


def test_check_snapshots(tmp_path):
    phema = tmp_path / "phema"
    phema.mkdir()
    entries = [Snapshot(phema / f"s{n}-{s}", n, s) for n in (64, 128, 192) for s in (0.05, 0.1)]
    write_index(phema, NET, [], entries)
    files = check_snapshots(tmp_path, RetrainSettings(budgets=(64, 128), lr=1e-3, ema_stds=(0.05, 0.1)))
    assert [f.name for f in files] == ["s64-0.05", "s64-0.1", "s128-0.05", "s128-0.1", "index.json"]
    with pytest.raises(ValueError, match=r"\(100, 0.05\).*callbacks.phema"):
        check_snapshots(tmp_path, RetrainSettings(budgets=(64, 100), lr=1e-3, ema_stds=(0.05, 0.1)))


def test_fine_tune_of_an_exact_target_base_regresses_its_samples(tmp_path):
    """A toy base trained with ``train.target=exact`` is fine-tuned on synthetic shards, which
    have no closed-form target: SIMS sets ``train.target=data``."""
    settings = RetrainSettings(budgets=(128,), lr=0.001, ema_stds=(0.05,))
    toy_net = {"arch": "mlp", "img_channels": 2, "label_dim": 2}
    cfg = fine_tune_config(
        compose_training,
        tmp_path / "run",
        "toy-sims0",
        tmp_path / "m.safetensors",
        toy_net,
        tmp_path / "shards",
        settings,
        ["experiment=toy2d-main"],
    )
    base = compose("train", ["experiment=toy2d-main"])
    assert base.train.target == "exact" and cfg.train.target == "data" and cfg.data.name == "shards"


def test_the_fine_tune_config_is_checked_in_the_parent(tmp_path):
    """A value of ``retrain.overrides`` that the training recipe refuses is a one-line
    ``ConfigError`` before any training process starts; the config handed to the child is
    resolved (no interpolations left)."""
    settings = RetrainSettings(budgets=(128,), lr=0.001, overrides=("train.P_std=-1",))
    args = (tmp_path / "run", "x", tmp_path / "m.safetensors", NET, tmp_path / "shards")
    with pytest.raises(ConfigError, match=r"^train\.P_std=-1\.0: expected"):
        fine_tune_config(compose_training, *args, settings, ["experiment=mnist-xs-guide"])
    cfg = fine_tune_config(
        compose_training, *args, RetrainSettings(budgets=(128,), lr=0.001), ["experiment=mnist-xs-guide"]
    )
    assert "${" not in OmegaConf.to_yaml(cfg) and cfg.callbacks.phema.out_dir == str(tmp_path / "run" / "phema")
