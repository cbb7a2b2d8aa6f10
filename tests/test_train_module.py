"""DiffusionModule: LR before every step from the image count (checked against the EDM2
formula written out here), gradient accumulation, non-finite gradients, label dropout,
per-step seeds, nimg in checkpoints."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch

from autoguide.data.datamodule import DataSettings, DiffusionDataModule
from autoguide.nets import network_config
from autoguide.train.module import DiffusionModule, step_seed
from autoguide.train.recipe import OptimizerSettings, RunSettings, TrainSettings

TOY_NET = {"arch": "mlp", "img_channels": 2, "label_dim": 2, "width": 8, "depth": 1}
LR_REF, T_REF, RAMPUP_IMG = 0.01, 3, 40


def edm2_lr(nimg: int, batch: int) -> float:
    """EDM2 eq. (13) with a linear warm-up, written out independently of the code under test."""
    decay = 1.0 / math.sqrt(max(nimg / (T_REF * batch), 1.0))
    warmup = min(nimg / RAMPUP_IMG, 1.0)
    return LR_REF * decay * warmup


def make_module(batch: int, net: dict = TOY_NET, optimizer: dict | None = None, **overrides) -> DiffusionModule:
    recipe = {
        "batch_size": batch,
        "lr_ref": LR_REF,
        "lr_ref_batches": T_REF,
        "lr_rampup_mi": RAMPUP_IMG / 2**20,
        "P_mean": -1.0,
        "P_std": 1.2,
        "duration_mi": 1,
        "log_kimg": 1,
        "checkpoint_kimg": 1,
        "sample_kimg": 1,
        "snapshot_kimg": 1,
    }
    recipe.update(overrides)
    if optimizer is not None:
        recipe["optimizer"] = OptimizerSettings(**optimizer)
    return DiffusionModule(RunSettings(network_config(net), TrainSettings(**recipe), seed=3))


class StepRecorder(L.Callback):
    """(nimg before the step, learning rate the step used) for every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.last = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.nimg != self.last:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.steps.append((self.last, lr))
            self.last = pl_module.nimg


def fit(batch: int, micro_batch: int, steps: int) -> tuple[DiffusionModule, StepRecorder]:
    module = make_module(batch)
    data = DiffusionDataModule(
        DataSettings.from_mapping({"name": "toy2d", "num_samples": 256, "conditional": True, "seed": 0}), micro_batch
    )
    recorder = StepRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        accumulate_grad_batches=batch // micro_batch,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=data)
    return module, recorder


def test_lr_schedule_and_nimg_match_edm2_formula():
    module, recorder = fit(batch=16, micro_batch=16, steps=8)
    assert module.nimg == 8 * 16
    assert [n for n, _ in recorder.steps] == [16 * k for k in range(8)]
    for nimg, lr in recorder.steps:
        assert lr == pytest.approx(edm2_lr(nimg, 16), rel=1e-12), nimg
    # the schedule really warms up and then decays over these steps
    lrs = [lr for _, lr in recorder.steps]
    assert lrs[0] == 0 and max(lrs) == pytest.approx(LR_REF) and lrs[-1] < LR_REF


def test_gradient_accumulation_keeps_the_big_batch_schedule():
    single, rec_single = fit(batch=16, micro_batch=16, steps=6)
    accum, rec_accum = fit(batch=16, micro_batch=4, steps=6)  # 4 micro-batches per step
    assert accum.nimg == single.nimg == 96
    assert rec_accum.steps == rec_single.steps


def test_non_finite_gradients_are_zeroed_and_lr_set_before_the_step():
    module = make_module(batch=16)
    module.nimg = 32
    optimizer = module.configure_optimizers()
    params = list(module.net.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad.view(-1)[0] = float("nan")
    params[1].grad.view(-1)[0] = float("inf")
    params[1].grad.view(-1)[-1] = -float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        module.on_before_optimizer_step(optimizer)
    assert params[0].grad.view(-1)[0] == 0 and params[0].grad.view(-1)[1:].eq(1).all()
    assert params[1].grad.view(-1)[0] == 0 and params[1].grad.view(-1)[-1] == 0
    assert all(torch.isfinite(p.grad).all() for p in params)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(edm2_lr(32, 16))
    assert optimizer.defaults["betas"] == (0.9, 0.99) and optimizer.defaults["eps"] == 1e-8


def test_label_dropout_replaces_labels_by_the_null_label():
    module = make_module(batch=16, cond_drop_prob=0.25)
    labels = torch.nn.functional.one_hot(torch.arange(4000) % 2, 2).float()
    torch.manual_seed(0)
    out = module._conditioning(labels)
    dropped = out.sum(dim=1) == 0
    assert 0.22 < dropped.float().mean() < 0.28
    assert torch.equal(out[~dropped], labels[~dropped])
    assert torch.equal(make_module(batch=16)._conditioning(labels), labels)


def test_unconditional_network_gets_no_labels_and_refuses_label_dropout():
    net = dict(TOY_NET, label_dim=0)
    module = make_module(batch=16, net=net)
    assert module._conditioning(torch.zeros(5, 0)) is None
    with pytest.raises(ValueError, match="cond_drop_prob"):
        make_module(batch=16, net=net, cond_drop_prob=0.1)


def test_step_seed_depends_on_seed_rank_and_image_count():
    base = step_seed(0, 0, 1024)
    assert base == step_seed(0, 0, 1024)
    assert len({base, step_seed(1, 0, 1024), step_seed(0, 1, 1024), step_seed(0, 0, 1056)}) == 4
    assert 0 <= base < 2**63


def test_same_seed_same_network_and_nimg_survives_checkpoint_hooks():
    a, b = make_module(batch=16), make_module(batch=16)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    a.nimg = 4096
    checkpoint: dict = {}
    a.on_save_checkpoint(checkpoint)
    b.on_load_checkpoint(checkpoint)
    assert b.nimg == 4096
    with pytest.raises(ValueError, match="autoguide_train"):
        b.on_load_checkpoint({})


def test_optimizer_is_configurable_and_keeps_the_lr_schedule():
    """``optimizer`` names any torch.optim class with its arguments; the schedule still sets lr
    before every step; bad names or arguments are refused at construction."""
    module = make_module(batch=16, optimizer={"name": "AdamW", "kwargs": {"weight_decay": 0.05, "betas": [0.8, 0.95]}})
    optimizer = module.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["weight_decay"] == 0.05 and tuple(optimizer.defaults["betas"]) == (0.8, 0.95)
    module.nimg = 48
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.on_before_optimizer_step(optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(edm2_lr(48, 16))
    sgd = make_module(batch=16, optimizer={"name": "SGD", "kwargs": {"momentum": 0.9}}).configure_optimizers()
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match=r"optimizer.name='Adamax2'"):
        make_module(batch=16, optimizer={"name": "Adamax2"})
    with pytest.raises(ValueError, match=r"optimizer.kwargs \['momentum'\] do not fit torch.optim.Adam"):
        make_module(batch=16, optimizer={"name": "Adam", "kwargs": {"momentum": 0.9}})
