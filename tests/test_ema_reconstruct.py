"""The reconstruction CLI: parsing, streaming sums against a direct in-memory sum, earlier
times, several folders, plotting, memory streaming and every refusal."""

import argparse
import json
import shutil
import weakref

import numpy as np
import pytest
import torch
from reconstruct_cli import cli, expect_refusal

import autoguide
import autoguide.ema.posthoc as posthoc
from autoguide.apps import reconstruct as rec
from autoguide.ema.power import solve_coefficients
from autoguide.ema.snapshots import Snapshot, read_index, snapshot_filename, write_index
from autoguide.ema.tracker import PowerEMA
from autoguide.io import read_model_file, save_model
from autoguide.nets import build_network

MLP = {"arch": "mlp", "img_channels": 2, "label_dim": 0, "width": 16, "depth": 2}
STEP = 64  # images per step
EVERY = 10  # steps per snapshot


def make_run(folder, steps=160, network=MLP, stds=(0.05, 0.1), seed=0):
    """A snapshot folder as the callback writes it, from a random-walk 'training' run."""
    torch.manual_seed(seed)
    net = build_network(network)
    ema = PowerEMA(net, stds)
    folder.mkdir(parents=True)
    buffers = [k for k, _ in net.named_buffers()]
    entries = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ema.update(net, step * STEP)
        if step % EVERY == 0:
            for s in stds:
                path = folder / snapshot_filename(step * STEP, s)
                card = {
                    "format": "autoguide-model/1",
                    "network": network,
                    "nimg": step * STEP,
                    "ema_std": s,
                    "source": "test",
                }
                save_model(path, ema.modules[s].state_dict(), card)
                entries.append(Snapshot(path, step * STEP, s))
    write_index(folder, network, buffers, entries)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "phema")


def direct_sum(folder, std, at):
    """sum_i c_i theta_i computed in memory with all snapshots loaded at once."""
    entries = [e for e in read_index(folder).entries if e.nimg <= at]
    c = solve_coefficients([e.nimg for e in entries], [e.std for e in entries], [at], [std])[:, 0]
    states = [read_model_file(e.path)[0] for e in entries]
    return {k: sum(float(ci) * s[k].double() for ci, s in zip(c, states, strict=True)) for k in states[0]}


def test_parse_stds_lists_and_inclusive_ranges():
    assert rec.parse_stds("0.05,0.07,0.1") == [0.05, 0.07, 0.1]
    assert rec.parse_stds("0.05:0.15:0.01") == pytest.approx(np.linspace(0.05, 0.15, 11).tolist())
    assert rec.parse_stds("0.02, 0.05:0.07:0.01,0.05") == pytest.approx([0.02, 0.05, 0.06, 0.07])
    for bad in ["abc", "0.1:0.05:0.01", "0.05:0.1", "0.5", "0", ""]:
        with pytest.raises(argparse.ArgumentTypeError):
            rec.parse_stds(bad)
    assert rec.parse_fraction("1/16") == 0.0625 and rec.parse_fraction("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError):
        rec.parse_fraction("3/2")


def test_outputs_match_direct_sum_and_are_loadable(run, tmp_path):
    stds = [0.06, 0.07, 0.075, 0.09, 0.12]
    cli(run, "--std", ",".join(map(str, stds)), "--out-dir", tmp_path / "b2", "--batch", 2)
    cli(run, "--std", ",".join(map(str, stds)), "--out-dir", tmp_path / "b8")
    last = 160 * STEP
    for s in stds:
        name = f"ema-{last:012d}-{s:.4f}.safetensors"
        net = autoguide.load_denoiser(tmp_path / "b2" / name)
        assert net.card["ema_std"] == s and net.card["nimg"] == last and net.card["network"] == MLP
        assert "reconstruction from 32 snapshots" in net.card["source"]
        expected = direct_sum(run, s, last)
        state = read_model_file(tmp_path / "b2" / name)[0]
        other = read_model_file(tmp_path / "b8" / name)[0]
        buffers = set(read_index(run).buffers)
        first = read_model_file(read_index(run).entries[0].path)[0]
        for k, v in state.items():
            assert torch.equal(v, other[k])
            if k in buffers:
                assert torch.equal(v, first[k])  # copied, not averaged
            else:
                torch.testing.assert_close(v.double(), expected[k], rtol=1e-6, atol=1e-7)


def test_earlier_time_equals_truncated_run(run, tmp_path):
    at = 40 * STEP
    cli(run, "--std", "0.07,0.09", "--at-nimg", at, "--out-dir", tmp_path / "full")
    cut = tmp_path / "cut" / "phema"
    cut.mkdir(parents=True)
    index = read_index(run)
    kept = [e for e in index.entries if e.nimg <= at]
    for e in kept:
        shutil.copy(e.path, cut / e.path.name)
    write_index(cut, index.network, index.buffers, [Snapshot(cut / e.path.name, e.nimg, e.std) for e in kept])
    cli(cut, "--std", "0.07,0.09")  # default time = last snapshot, default out dir
    cli(run, "--std", "0.07,0.09", "--at-fraction", "1/4", "--out-dir", tmp_path / "frac")
    for s in (0.07, 0.09):
        name = f"ema-{at:012d}-{s:.4f}.safetensors"
        a = read_model_file(tmp_path / "full" / name)[0]
        b = read_model_file(tmp_path / "cut" / "reconstructed" / name)[0]
        c = read_model_file(tmp_path / "frac" / name)[0]
        for k in a:
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k])


def test_resumed_run_split_over_two_folders(run, tmp_path):
    index = read_index(run)
    halves = [tmp_path / "one", tmp_path / "two"]
    for half, keep in zip(halves, [lambda e: e.nimg <= 80 * STEP, lambda e: e.nimg > 80 * STEP], strict=True):
        half.mkdir()
        chosen = [e for e in index.entries if keep(e)]
        for e in chosen:
            shutil.copy(e.path, half / e.path.name)
        write_index(half, index.network, index.buffers, [Snapshot(half / e.path.name, e.nimg, e.std) for e in chosen])
    cli(*halves, "--std", "0.08", "--out-dir", tmp_path / "split")
    cli(run, "--std", "0.08", "--out-dir", tmp_path / "whole")
    name = f"ema-{160 * STEP:012d}-0.0800.safetensors"
    a, b = read_model_file(tmp_path / "split" / name)[0], read_model_file(tmp_path / "whole" / name)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):
        cli(run, halves[1], "--std", "0.08", "--out-dir", tmp_path / "dup")


def test_plot_and_dry_run(run, tmp_path, capsys):
    cli(run, "--std", "0.03:0.15:0.03", "--plot", tmp_path / "p.png", "--dry-run", "--out-dir", tmp_path / "o")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "o").exists()
    assert capsys.readouterr().out.count("profile error") == 5


def test_one_snapshot_in_memory_at_a_time(run, tmp_path, monkeypatch):
    alive: list[weakref.ref] = []
    peak = []
    original = posthoc.read_snapshot

    def tracked(snap):
        peak.append(sum(r() is not None for r in alive))
        state = original(snap)
        alive.extend(weakref.ref(v) for v in state.values())
        return state

    monkeypatch.setattr(posthoc, "read_snapshot", tracked)
    cli(run, "--std", "0.06,0.08,0.1,0.12", "--out-dir", tmp_path, "--batch", 2)
    assert len(peak) == 2 * 32 and max(peak) == 0


def test_refusals(run, tmp_path, capsys):
    expect_refusal(capsys, run, "--std", "0.07,0.28", match="cannot represent EMA std 0.28")
    expect_refusal(capsys, run, "--std", "0.07", "--at-nimg", 161 * STEP, match="beyond the last snapshot")
    expect_refusal(
        capsys, run, "--std", "0.07", "--at-nimg", 45 * STEP, match="not a snapshot time (nearest: 2560, 3200)"
    )
    expect_refusal(capsys, tmp_path / "nowhere", "--std", "0.07", match="index.json")

    other = make_run(tmp_path / "other" / "phema", steps=20, network={**MLP, "width": 8})
    expect_refusal(capsys, run, other, "--std", "0.07", match="different architectures")

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    entries = read_index(broken).entries
    victim = entries[10].path
    victim.write_bytes(victim.read_bytes()[:-100])
    expect_refusal(capsys, broken, "--std", "0.07", match=str(victim))
    victim.unlink()
    expect_refusal(capsys, broken, "--std", "0.07", match=str(victim))

    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    alien = read_index(other).entries[-1].path
    target = read_index(mixed).entries[4].path
    shutil.copy(alien, target)
    expect_refusal(capsys, mixed, "--std", "0.07", match=f"{target}: network architecture differs")

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text(json.dumps({"format": "something-else"}))
    expect_refusal(capsys, tmp_path / "bad", "--std", "0.07", match="autoguide-phema-index/1")


def test_module_entry_point(run, tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "autoguide.apps.reconstruct", str(run), "--std", "0.31", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "outside the power-EMA range" in done.stderr
