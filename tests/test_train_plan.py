"""Image-counted training plan: batch split over devices and accumulation, duration in steps,
interval triggers; the recipe's values checked once by ``TrainSettings``."""

from __future__ import annotations

import dataclasses

import pytest

from autoguide.core.typed_settings import ConfigError
from autoguide.train.plan import IntervalTrigger, batch_plan, crossed
from autoguide.train.recipe import TrainSettings

RECIPE = TrainSettings(
    batch_size=32,
    duration_mi=1,
    lr_ref=0.01,
    lr_ref_batches=0,
    P_mean=-0.4,
    P_std=1.0,
    log_kimg=1,
    checkpoint_kimg=1,
    sample_kimg=1,
    snapshot_kimg=1,
)


def recipe(**changes) -> TrainSettings:
    return dataclasses.replace(RECIPE, **changes)


@pytest.mark.parametrize(
    ("batch", "world", "micro_batch", "expected"),
    [
        (2048, 8, None, (256, 1)),
        (2048, 8, 64, (64, 4)),
        (64, 1, 16, (16, 4)),
        (12, 3, 2, (2, 2)),
    ],
)
def test_batch_plan_splits_global_batch(batch, world, micro_batch, expected):
    plan = batch_plan(batch, world, micro_batch)
    assert (plan.micro_batch, plan.accumulate) == expected
    assert plan.world_size * plan.micro_batch * plan.accumulate == batch


@pytest.mark.parametrize(
    ("batch", "world", "micro_batch", "key"),
    [
        (10, 4, None, "train.batch_size=10"),
        (64, 2, 12, "train.micro_batch=12"),
        (0, 1, None, "train.batch_size=0"),
        (64, 1, 0, "train.micro_batch=0"),
        (12.5, 1, None, "train.batch_size=12.5"),
        (64, 1, 8.0, "train.micro_batch=8.0"),
    ],
)
def test_batch_plan_errors_name_the_key(batch, world, micro_batch, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        recipe(batch_size=batch, micro_batch=micro_batch).batch_plan(world)


def test_duration_in_images_and_steps():
    assert recipe(duration_mi=1).total_nimg == 1048576
    assert recipe(duration_mi=0.125).total_nimg == 131072
    assert recipe(duration_mi=2048, duration_fraction=0.0625).total_nimg == 128 * 1048576  # a guide at T/16
    assert recipe(duration_mi=0.0003).total_nimg == 315  # round(0.0003 * 2**20)
    assert recipe(duration_mi=0.0003).total_steps == 10  # ceil: the last step passes the target
    assert recipe(duration_mi=320 / 2**20).total_steps == 10
    assert recipe(duration_mi=321 / 2**20).total_steps == 11


@pytest.mark.parametrize("value", [-1, 0, float("nan"), float("inf"), "1", True])
def test_duration_must_be_positive_number(value):
    with pytest.raises(ConfigError, match=r"train\.duration_mi"):
        recipe(duration_mi=value)
    with pytest.raises(ConfigError, match=r"train\.duration_fraction"):
        recipe(duration_fraction=value)


def test_intervals_in_kimg():
    assert recipe(log_kimg=16).interval_images("log_kimg") == 16000
    assert recipe(snapshot_kimg=8388.608).interval_images("snapshot_kimg") == 8 * 2**20
    assert recipe(checkpoint_kimg=0.0001).interval_images("checkpoint_kimg") == 1
    with pytest.raises(ConfigError, match=r"train\.sample_kimg=-2"):
        recipe(sample_kimg=-2)


def test_crossed_counts_multiples_passed():
    assert crossed(0, 1000, 1000)
    assert not crossed(0, 999, 1000)
    assert crossed(999, 1001, 1000)
    assert not crossed(1000, 1999, 1000)
    assert crossed(1500, 4000, 1000)


def test_interval_trigger_fires_per_boundary_and_at_the_end():
    trigger = IntervalTrigger(100)
    trigger.start(0)
    fired = []
    for nimg in range(0, 450 + 1, 30):  # 0 repeats the start: a micro-batch without a step
        if trigger.due(nimg, final=nimg == 450):
            fired.append(nimg)
    assert fired == [120, 210, 300, 420, 450]
    assert not trigger.due(450, final=True)  # no step since the last call: never fires


def test_interval_trigger_restarts_from_a_resumed_count():
    trigger = IntervalTrigger(100)
    trigger.start(250)
    assert not trigger.due(280, final=False)
    assert trigger.due(310, final=False)
