"""Post-hoc EMA from EDM2 raw snapshots: a folder written in EDM2's layout (several times, both
stds, fp16 pickles) reconstructs to the float64 coefficient sum; every bad input is refused,
naming the file, before any output; the outputs serve the cache, the sweep and the export."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from edm2_pickles import (
    TINY,
    fake_edm2_modules,
    raw_snapshot_name,
    tiny_net,
    write_raw_snapshots,
    write_release,
)
from reconstruct_cli import cli, expect_refusal

from autoguide.ema.posthoc import PosthocEMA
from autoguide.ema.power import solve_coefficients
from autoguide.io import file_sha256, load_denoiser, read_model_file
from autoguide.io.edm2_export import export_edm2
from autoguide.nets import config_dict

MI = 2**20
TIMES = [k * MI for k in (1, 2, 3, 4, 6, 8)]  # file names hold nimg // 1000: 0001048, 0002097, ...
STDS = (0.05, 0.10)


def snapshot_states(net, seed=0):
    """Distinct weights per (time, std); buffers (Fourier features) shared, as in training."""
    torch.manual_seed(seed)
    base = net.state_dict()
    buffers = {k for k, _ in net.named_buffers()}
    return {
        (t, s): {k: v if k in buffers else v + 0.05 * (i + 1) * torch.randn_like(v) for k, v in base.items()}
        for i, (t, s) in enumerate((t, s) for t in TIMES for s in STDS)
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    net = tiny_net()
    states = snapshot_states(net)
    with fake_edm2_modules(root / "code-was-executed") as fake:
        write_raw_snapshots(fake, root / "edm2-img512-tiny", net, states)
    assert not (root / "code-was-executed").exists()
    return root / "edm2-img512-tiny", states


def float64_sum(states, std, at):
    """sum_i c_i theta_i over the fp16 snapshots, in float64."""
    used = [key for key in states if key[0] <= at]
    c = solve_coefficients([t for t, _ in used], [s for _, s in used], [at], [std])[:, 0]
    return {
        k: sum(float(ci) * states[key][k].half().double() for ci, key in zip(c, used, strict=True))
        for k in states[used[0]]
    }


def rel_l2(a, b):
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))


def test_raw_folder_reconstructs_to_the_float64_coefficient_sum(raw, tmp_path):
    folder, states = raw
    cli(folder, "--std", "0.07,0.11", "--batch", 1, "--out-dir", tmp_path / "last")
    cli(folder, "--std", "0.09", "--at-fraction", "1/2", "--out-dir", tmp_path / "half")
    cli(folder, "--std", "0.09", "--at-nimg", 4 * MI, "--out-dir", tmp_path / "nimg")
    name = f"ema-{4 * MI:012d}-0.0900.safetensors"
    half, nimg = read_model_file(tmp_path / "half" / name)[0], read_model_file(tmp_path / "nimg" / name)[0]
    assert all(torch.equal(half[k], nimg[k]) for k in half)
    buffers = {k for k, _ in tiny_net().named_buffers()}
    cases = ((tmp_path / "last", 0.07, 8 * MI), (tmp_path / "last", 0.11, 8 * MI), (tmp_path / "half", 0.09, 4 * MI))
    for out, std, at in cases:
        path = out / f"ema-{at:012d}-{std:.4f}.safetensors"
        state, card = read_model_file(path)
        expected = float64_sum(states, std, at)
        assert set(state) == set(expected)
        for k, v in state.items():
            assert v.dtype == torch.float32
            if k in buffers:
                assert torch.equal(v, states[(at, 0.10)][k].half().float())
            else:
                assert rel_l2(v, expected[k]) <= 1e-6, k
        assert card["network"] == config_dict(TINY)
        assert (card["nimg"], card["ema_std"]) == (at, std)  # a multiple of 1024, not kimg * 1000
        assert card["latent"]["type"] == "stability_vae"
        used = [(t, s) for t in TIMES if t <= at for s in STDS]
        assert [(i["nimg"], i["std"]) for i in card["inputs"]] == used
        for item, (t, s) in zip(card["inputs"], used, strict=True):
            assert item["file"] == str((folder / raw_snapshot_name(t, s)).resolve())
            assert item["sha256"] == file_sha256(item["file"])
        assert "EDM2 raw snapshots" in card["source"]
        assert load_denoiser(path).card["nimg"] == at


def test_cache_dry_run_and_export(raw, tmp_path, capsys):
    folder, _ = raw
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    cli(run, "--std", "0.05:0.11:0.02", "--plot", tmp_path / "p.png", "--dry-run")
    assert capsys.readouterr().out.count("profile error") == 4 and not (run / "reconstructed").exists()
    nimg, files = PosthocEMA(run).cached([0.08], None)  # what autoguide-sweep does with guides.runs / main.run
    assert nimg == 8 * MI and files[0.08].parent == run / "reconstructed"
    again = PosthocEMA(run).cached([0.08], None)[1][0.08]
    assert again == files[0.08] and again.stat().st_mtime_ns == files[0.08].stat().st_mtime_ns
    kwargs = export_edm2(files[0.08], tmp_path / "ref.safetensors")
    assert kwargs["model_channels"] == TINY["model_channels"]


def copy_of(raw, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(raw[0], folder)
    return folder


def test_bad_folders_are_refused_naming_the_file(raw, tmp_path, capsys):
    partial = copy_of(raw, tmp_path, "partial")
    (partial / raw_snapshot_name(3 * MI, 0.10)).unlink()
    first = partial / raw_snapshot_name(3 * MI, 0.05)
    expect_refusal(capsys, partial, "--std", "0.08", match=f"{first}: snapshot time nimg={3 * MI} has stds [0.05]")

    expect_refusal(capsys, raw[0], raw[0], "--std", "0.08", match="appears twice")

    prefixes = copy_of(raw, tmp_path, "prefixes")
    shutil.copy(prefixes / raw_snapshot_name(MI, 0.05), prefixes / raw_snapshot_name(MI, 0.05, "edm2-img512-xs"))
    expect_refusal(capsys, prefixes, "--std", "0.08", match="name prefix differs")

    no_time = copy_of(raw, tmp_path, "no-time")
    shutil.copy(no_time / raw_snapshot_name(MI, 0.05), no_time / "network-snapshot-0000042-0.050.pkl")
    shutil.copy(no_time / raw_snapshot_name(MI, 0.10), no_time / "network-snapshot-0000042-0.100.pkl")
    expect_refusal(capsys, no_time, "--std", "0.08", match="kimg 0000042 is no EDM2 snapshot time")


@pytest.mark.parametrize("damage", ["truncated", "cut-inside", "not-edm2", "malicious", "other-network"])
def test_bad_files_are_refused_before_any_output(raw, tmp_path, capsys, damage):
    folder = copy_of(raw, tmp_path, damage)
    victim = folder / raw_snapshot_name(2 * MI, 0.05)  # an early file: read late in the first pass
    sentinel = tmp_path / "code-was-executed"
    data = victim.read_bytes()
    if damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
        match = f"{victim}: does not end like a pickle"
    elif damage == "cut-inside":
        victim.write_bytes(data[: len(data) // 2] + b".")  # ends like a pickle, read fails
        match = f"{victim}"
    elif damage == "not-edm2":
        victim.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
        match = f"{victim}: unexpected top-level key"
    elif damage == "malicious":

        class Evil:
            def __reduce__(self):
                import os

                return os.system, (f"touch {sentinel}",)

        victim.write_bytes(pickle.dumps({"ema": Evil()}))
        match = "refusing global posix.system"
    else:
        with fake_edm2_modules(sentinel) as fake:
            write_release(fake, victim, tiny_net(model_channels=8))
        match = f"{victim}: network architecture differs"
    out = tmp_path / "out"
    expect_refusal(capsys, folder, "--std", "0.07,0.11", "--batch", 1, "--out-dir", out, match=match)
    assert not list(out.glob("*.safetensors")) and not sentinel.exists()
