"""``train.gradients.FlatGradients``: the gradients as views of one buffer, laid out as their
parameters (channels-last included), equal to plain autograd's, cleaned and zeroed in one go."""

import pytest
import torch

from autoguide.train.gradients import FlatGradients


def make_params():
    torch.manual_seed(0)
    conv = torch.nn.Parameter(torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    linear = torch.nn.Parameter(torch.randn(5, 8))
    gain = torch.nn.Parameter(torch.randn(()))
    return [conv, linear, gain]


def loss_of(params, x):
    conv, linear, gain = params
    y = torch.nn.functional.conv2d(x, conv, padding=1).mean(dim=(2, 3))
    return (gain * (y @ linear.t())).square().sum()


def test_views_have_the_parameters_layout_and_hold_autograds_gradients():
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    plain = make_params()
    loss_of(plain, x).backward()
    params = make_params()
    flat = FlatGradients(params)
    for _ in range(2):  # accumulation into the views, then a zeroed second step
        flat.zero_()
        loss_of(params, x).backward()
    for p, q in zip(params, plain, strict=True):
        assert p.grad.stride() == p.stride()
        assert p.grad.data_ptr() >= flat.buffer.data_ptr()
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    assert flat.intact()


def test_clean_zeroes_non_finite_entries_and_zero_restores_replaced_views():
    params = make_params()
    flat = FlatGradients(params)
    params[0].grad[0, 0, 0, 0] = float("nan")
    params[1].grad[1, 2] = float("inf")
    params[2].grad.fill_(3.0)
    flat.clean_()
    assert torch.isfinite(flat.buffer).all() and params[2].grad.item() == 3.0
    params[1].grad = torch.full((5, 8), float("-inf"))  # a caller replaced one gradient
    assert not flat.intact()
    flat.clean_()
    assert (params[1].grad == 0).all()
    flat.zero_()
    assert flat.intact() and (flat.buffer == 0).all()


def test_refuses_mixed_dtypes_and_overlapping_parameters():
    with pytest.raises(ValueError, match="one device and dtype"):
        FlatGradients([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])
    expanded = torch.nn.Parameter(torch.zeros(1, 3).expand(4, 3))
    with pytest.raises(ValueError, match="dense parameters"):
        FlatGradients([expanded])
