"""PowerEMA (several power EMAs of a module) and post-hoc reconstruction on a synthetic
trajectory, checked against independent closed-form weighted averages."""

import numpy as np
import pytest
import torch
from torch import nn

from autoguide.ema.power import sigma_rel_to_gamma, solve_coefficients
from autoguide.ema.tracker import PowerEMA
from autoguide.nets import build_network


class Toy(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))


def drive(trajectory: np.ndarray, times: np.ndarray, stds, snapshot_every: int | None = None):
    """Run PowerEMA along (times, trajectory); optionally collect snapshots of every EMA
    whenever the time crosses a multiple of ``snapshot_every``."""
    net = Toy(trajectory.shape[1])
    ema = PowerEMA(net, stds)
    snaps = []
    for k, (t, theta) in enumerate(zip(times, trajectory, strict=True)):
        with torch.no_grad():
            net.w.copy_(torch.from_numpy(theta))
            net.step.fill_(k)
        before = ema.nimg
        ema.update(net, int(t))
        if snapshot_every and int(t) // snapshot_every > before // snapshot_every:
            snaps += [(int(t), s, ema.modules[s].w.detach().clone().numpy()) for s in stds]
    return net, ema, snaps


def test_update_matches_direct_weighted_average_and_copies_buffers():
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.choice([3, 16, 64, 250], size=300))
    traj = np.cumsum(rng.normal(size=(300, 6)), axis=0)
    stds = (0.05, 0.1)
    _net, ema, _ = drive(traj, times, stds)
    edges = np.concatenate([[0], times]).astype(np.float64)
    for s in stds:
        g = sigma_rel_to_gamma(s)
        weights = np.diff(edges ** (g + 1)) / edges[-1] ** (g + 1)
        np.testing.assert_allclose(ema.modules[s].w.numpy(), weights @ traj, rtol=1e-9, atol=1e-9)
        assert ema.modules[s].step.item() == 299  # copied, not averaged
    assert ema.nimg == times[-1]


def test_no_update_without_progress_and_no_going_back():
    net = Toy()
    ema = PowerEMA(net, (0.05,))
    assert ema.update(net, 10)
    with torch.no_grad():
        net.w.add_(1.0)
    assert not ema.update(net, 10)
    assert torch.all(ema.modules[0.05].w == 0)
    with pytest.raises(ValueError, match="went backwards"):
        ema.update(net, 5)


def test_ema_copies_are_eval_frozen_and_never_renormalised():
    net = build_network({"arch": "mlp", "img_channels": 2, "label_dim": 0, "width": 16, "depth": 2})
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # un-normalised weights: a training-mode forward would rewrite them
    ema = PowerEMA(net, (0.05, 0.1))
    copy = ema.modules[0.05]
    assert not copy.training and not any(p.requires_grad for p in copy.parameters())
    before = {k: v.clone() for k, v in copy.state_dict().items()}
    copy(torch.randn(4, 2), torch.ones(4))
    for k, v in copy.state_dict().items():
        assert torch.equal(v, before[k]), k
    net.train()(torch.randn(4, 2), torch.ones(4))  # the trained net *is* rewritten
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_state_round_trip_and_std_mismatch():
    rng = np.random.default_rng(2)
    times = np.cumsum(rng.integers(1, 50, size=40))
    traj = rng.normal(size=(40, 6))
    _, full, _ = drive(traj, times, (0.05, 0.1))
    _, first, _ = drive(traj[:20], times[:20], (0.05, 0.1))
    resumed = PowerEMA(Toy(), (0.05, 0.1))
    resumed.load_state_dict(first.state_dict())
    net = Toy()
    for t, theta in zip(times[20:], traj[20:], strict=True):
        with torch.no_grad():
            net.w.copy_(torch.from_numpy(theta))
        resumed.update(net, int(t))
    for s in (0.05, 0.1):
        assert torch.equal(resumed.modules[s].w, full.modules[s].w)
    with pytest.raises(ValueError, match="stds"):
        PowerEMA(Toy(), (0.05, 0.2)).load_state_dict(first.state_dict())


def reconstruct(snaps, target_nimg, std):
    nimg = np.array([t for t, _, _ in snaps], dtype=np.float64)
    stds = np.array([s for _, s, _ in snaps])
    c = solve_coefficients(nimg, stds, [target_nimg], [std])[:, 0]
    return sum(ci * w for ci, (_, _, w) in zip(c, snaps, strict=True) if ci != 0)


def test_reconstruction_matches_directly_tracked_ema_on_synthetic_trajectory():
    """Track 0.05, 0.10 (stored) and 0.075 (reference) along a noisy trajectory with
    irregular batch sizes; 0.075 rebuilt from the snapshots must match the tracked one."""
    rng = np.random.default_rng(3)
    end, dim = 64 * 4096, 200
    times = np.cumsum(rng.choice([32, 48, 64, 96], size=end // 32))
    times = np.append(times[times < end], end)  # end exactly on a snapshot boundary
    drift = np.linspace(0, 1, len(times))[:, None] * rng.normal(size=dim)
    traj = drift + np.cumsum(rng.normal(scale=0.05, size=(len(times), dim)), axis=0)
    snapshot_every = 64 * 4096 // 32  # 32 snapshots per EMA
    stds = (0.05, 0.1, 0.075)
    _, ema, snaps = drive(traj, times, stds, snapshot_every)
    stored = [x for x in snaps if x[1] != 0.075]
    direct = ema.modules[0.075].w.numpy()
    rebuilt = reconstruct(stored, times[-1], 0.075)
    gap = np.linalg.norm(direct - ema.modules[0.05].w.numpy())  # scale of an EMA-length change
    rel = np.linalg.norm(rebuilt - direct) / gap
    print(
        f"synthetic: |rebuilt - tracked| / |ema(0.075) - ema(0.05)| = {rel:.2e}, "
        f"relative to |tracked| = {np.linalg.norm(rebuilt - direct) / np.linalg.norm(direct):.2e}"
    )
    assert rel < 2e-3
    # and at an earlier stored time: the tracked 0.075 snapshot taken there
    t_mid = sorted({t for t, _, _ in snaps})[15]
    direct_mid = next(w for t, s, w in snaps if t == t_mid and s == 0.075)
    rebuilt_mid = reconstruct([x for x in stored if x[0] <= t_mid], t_mid, 0.075)
    assert np.allclose(rebuilt_mid, reconstruct(stored, t_mid, 0.075), rtol=0, atol=1e-12)
    gap_mid = np.linalg.norm(direct_mid - next(w for t, s, w in snaps if t == t_mid and s == 0.05))
    rel_mid = np.linalg.norm(rebuilt_mid - direct_mid) / gap_mid
    print(f"synthetic at snapshot 16 of 32: relative to the 0.05-0.075 gap {rel_mid:.2e}")
    assert rel_mid < 1e-2
