"""The Hydra config tree: every experiment composes and passes the static checks, guides
inherit their main run's data/conditioning/schedule, no epochs anywhere, the run folder is
Hydra's output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autoguide.apps.config_tree import compose, config_dir
from autoguide.core.typed_settings import ConfigError
from autoguide.core.units import MI
from autoguide.train.run_config import read_train_config

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
GUIDES = {  # guide: (main run, network preset, share of the main run's duration)
    "mnist-xs-guide": ("mnist-s", "mnist-xs", 1 / 8),
    "toy2d-guide": ("toy2d-main", "toy-energy", 1 / 8),
    "img64-xs-guide": ("img64-s", "img64-xs", 1 / 8),
    "img512-xs-guide": ("img512-s", "img512-xs", 1 / 16),
    "img512-m-guide": ("img512-xxl", "img512-m", 1 / 3.5),
    "img512-xs-guide-for-imported": ("img512-s", "img512-xs", 1 / 16),
}


def make_config(overrides: list[str], hydra: bool = False):
    return compose("train", overrides, return_hydra_config=hydra)


def plain(cfg, key):
    return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)


def all_keys(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from all_keys(value, f"{prefix}{key}.")


def test_the_expected_experiments_exist():
    assert {"mnist-s", "mnist-xs-guide", "toy2d-main", "toy2d-guide", "img64-s", "img64-xs-guide", "img512-s"} <= set(
        EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("debug", [None, "fast"])
def test_experiment_composes_and_passes_checks(experiment, debug):
    cfg = make_config([f"experiment={experiment}"] + ([f"debug={debug}"] if debug else []))
    if OmegaConf.is_missing(cfg, "main_model"):  # a guide for a given main model: it must be named
        with pytest.raises(ConfigError, match=f"^main_model is not set: experiment {experiment} trains a guide"):
            read_train_config(cfg)
        cfg.main_model = "main.safetensors"  # read (and checked against the data) when training starts
    job = read_train_config(cfg)
    assert job.name == experiment and job.run_dir.name == experiment
    assert cfg.name == experiment
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert not [k for k in all_keys(resolved) if "epoch" in k.lower()]
    assert resolved["run_dir"].endswith(f"debug/{experiment}" if debug else experiment)


def test_no_arguments_means_mnist_s_on_the_cpu():
    cfg = make_config([])
    assert cfg.name == "mnist-s" and cfg.data.name == "mnist5k" and cfg.trainer.accelerator == "cpu"
    assert cfg.net.model_channels == plain(make_config(["net=mnist-s"]), "net")["model_channels"]
    assert "progress_bar" in cfg.callbacks and cfg.logger.wandb.offline is True
    assert plain(cfg, "callbacks.phema.stds") == [0.05, 0.10]


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_inherits_main_run_and_trains_a_fraction(guide):
    main_name, preset, share = GUIDES[guide]
    main, g = make_config([f"experiment={main_name}"]), make_config([f"experiment={guide}"])
    assert plain(g, "data") == plain(main, "data")
    assert g.net.label_dim == main.net.label_dim
    assert plain(g, "net") != plain(main, "net")
    for key in ("batch_size", "duration_mi", "P_mean", "P_std", "lr_ref_batches", "lr_rampup_mi", "cond_drop_prob"):
        assert g.train[key] == main.train[key], key
    assert g.train.duration_fraction == share and main.train.duration_fraction == 1
    assert round(g.train.duration_mi * g.train.duration_fraction * MI) == round(share * main.train.duration_mi * MI)
    # the inheritance is live: overriding the main run's duration moves the guide's with it
    assert make_config([f"experiment={guide}", "train.duration_mi=64"]).train.duration_mi == 64
    if guide != "toy2d-guide":
        assert plain(g, "net") == plain(make_config([f"net={preset}"]), "net")


def test_hydra_output_folder_is_the_run_folder():
    cfg = make_config(["experiment=toy2d-main", "paths.runs_dir=/somewhere"], hydra=True)
    assert cfg.hydra.run.dir == "/somewhere/toy2d-main"
    assert cfg.hydra.job.chdir is False
    cfg = make_config(["run_dir=/x/y"], hydra=True)
    assert cfg.hydra.run.dir == "/x/y"


def test_trainer_groups():
    for name, accelerator, precision in [
        ("cpu", "cpu", "32-true"),
        ("gpu", "gpu", "bf16-mixed"),
        ("ddp", "gpu", "bf16-mixed"),
        ("ddp_cpu", "cpu", "32-true"),
    ]:
        trainer = make_config([f"trainer={name}"]).trainer
        assert (trainer.accelerator, trainer.precision) == (accelerator, precision)
    assert make_config(["trainer=ddp_cpu"]).trainer.strategy == "ddp"


def test_the_typed_config_keeps_the_composed_record():
    cfg = make_config(["experiment=toy2d-main", "logger=none", "seed=3"])
    job = read_train_config(cfg)
    assert job.composed["run_dir"] == "${paths.runs_dir}/${name}"  # Hydra's record: as composed
    assert job.resolved == OmegaConf.to_container(cfg, resolve=True)  # the run folder's config.yaml
    assert job.run_dir == Path(OmegaConf.select(cfg, "run_dir")) and job.settings.seed == 3
    assert job.trainer == plain(cfg, "trainer") and job.logger == {} and job.main_model is None
    assert job.settings.train.batch_size == cfg.train.batch_size and job.data.dataset["name"] == "toy2d"
    again = read_train_config(OmegaConf.to_container(cfg, resolve=True))  # a resolved file (SIMS) reads the same
    assert again.resolved == job.resolved and again.settings == job.settings
