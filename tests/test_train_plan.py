"""Image-counted training plan: batch split over devices and accumulation, duration in steps,
interval triggers."""

from __future__ import annotations

import pytest

from autoguide.train.plan import (
    ConfigError,
    IntervalTrigger,
    batch_plan,
    crossed,
    interval_images,
    total_images,
    total_steps,
)


@pytest.mark.parametrize(
    ("batch", "world", "per_device", "expected"),
    [
        (2048, 8, None, (256, 1)),
        (2048, 8, 64, (64, 4)),
        (64, 1, 16, (16, 4)),
        (12, 3, 2, (2, 2)),
    ],
)
def test_batch_plan_splits_global_batch(batch, world, per_device, expected):
    plan = batch_plan(batch, world, per_device)
    assert (plan.per_device, plan.accumulate) == expected
    assert plan.world_size * plan.per_device * plan.accumulate == batch


@pytest.mark.parametrize(
    ("batch", "world", "per_device", "key"),
    [
        (10, 4, None, "train.batch_size=10"),
        (64, 2, 12, "train.batch_per_device=12"),
        (0, 1, None, "train.batch_size=0"),
        (64, 1, 0, "train.batch_per_device=0"),
        (12.5, 1, None, "train.batch_size=12.5"),
        (64, 1, 8.0, "train.batch_per_device=8.0"),
    ],
)
def test_batch_plan_errors_name_the_key(batch, world, per_device, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        batch_plan(batch, world, per_device)


def test_duration_in_images_and_steps():
    assert total_images(1) == 1048576
    assert total_images(0.125) == 131072
    assert total_images(2048, 0.0625) == 128 * 1048576  # a guide at T/16
    assert total_images(0.0003) == 315  # round(0.0003 * 2**20)
    assert total_steps(315, 32) == 10  # ceil: the last step passes the target
    assert total_steps(320, 32) == 10
    assert total_steps(321, 32) == 11


@pytest.mark.parametrize("value", [-1, 0, float("nan"), float("inf"), "1", True])
def test_duration_must_be_positive_number(value):
    with pytest.raises(ConfigError, match=r"train\.duration_mi"):
        total_images(value)
    with pytest.raises(ConfigError, match=r"train\.duration_fraction"):
        total_images(1.0, value)


def test_intervals_in_kimg():
    assert interval_images(16, "k") == 16000
    assert interval_images(8388.608, "k") == 8 * 2**20
    assert interval_images(0.0001, "k") == 1
    with pytest.raises(ConfigError, match=r"train\.sample_kimg=-2"):
        interval_images(-2, "train.sample_kimg")


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
