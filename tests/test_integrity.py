"""Verified files: every model file, snapshot and checkpoint carries a SHA-256 checked on read,
flipped bytes and swapped files are refused naming the file, a damaged newest checkpoint falls
back to the newest intact one, non-finite tensors are never written (nor used for generation),
and a full disk ends in one line naming the file with no temporary file left."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from autoguide.apps import reconstruct as rec
from autoguide.ema.snapshots import Snapshot, read_index, read_snapshot, snapshot_filename, write_index
from autoguide.io import ModelFileError, read_card, read_model_file, save_model
from autoguide.io.integrity import NonFiniteError, state_sha256
from autoguide.io.model_file import CARD_KEY
from autoguide.nets import build_network
from autoguide.train.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    checkpoint_path,
    newest_intact_checkpoint,
    sidecar_path,
)

REPO = Path(__file__).resolve().parents[1]
MLP = {"arch": "mlp", "img_channels": 2, "label_dim": 0, "width": 16, "depth": 2}


def flip_byte(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


def test_card_digest_is_the_sha256_of_card_and_tensors(tmp_path):
    """The digest recomputed independently from the documented byte layout (hashlib, numpy)."""
    state = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.tensor([1.5], dtype=torch.float64)}
    path = tmp_path / "m.safetensors"
    digest = save_model(path, state, {"network": MLP, "nimg": 7})
    card = read_card(path)
    card_json = json.dumps({"format": "autoguide-model/1", "network": MLP, "nimg": 7}, sort_keys=True)
    expected = hashlib.sha256(card_json.encode())
    for name in ("a", "b"):
        t = state[name]
        expected.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        expected.update(t.numpy().tobytes())
    assert card["sha256"] == digest == expected.hexdigest()
    assert state_sha256(read_model_file(path)[0], card) == digest


def test_flipped_bytes_in_a_model_file_are_refused_naming_it(tmp_path):
    net = build_network(MLP)
    path = tmp_path / "model.safetensors"
    save_model(path, net, {"network": MLP})
    flip_byte(path)  # inside the last tensor's data
    with pytest.raises(ModelFileError, match=r"model\.safetensors: weights or card differ from the SHA-256"):
        read_model_file(path)


def test_non_finite_weights_are_never_written_and_never_used(tmp_path):
    net = build_network(MLP)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() >= 3)
    state[name].view(-1)[:3] = torch.tensor([float("nan"), float("inf"), 1.0])
    path = tmp_path / "nan.safetensors"
    with pytest.raises(NonFiniteError, match=rf"nan\.safetensors: refusing to write .*{name}'? has 2 of"):
        save_model(path, state, {"network": MLP})
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file
    # a file written by other means: refused by every reader, generation included
    card = {"format": "autoguide-model/1", "network": MLP}
    save_file(state, str(path), metadata={CARD_KEY: json.dumps(card)})
    with pytest.raises(ModelFileError, match=rf"nan\.safetensors: refusing to use non-finite values: tensor '{name}'"):
        read_model_file(path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoguide.apps.generate",
            f"model={path}",
            "guidance=none",
            "seeds=0-1",
            f"output.dir={tmp_path / 'out'}",
            "sampler.num_steps=2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "non-finite" in lines[0] and str(path) in lines[0]
    assert not list((tmp_path / "out").glob("*.png"))


def snapshot_folder(folder: Path, steps: int = 4, seed: int = 0) -> Path:
    """A snapshot folder as the EMA callback writes it (digests in the index)."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    net = build_network(MLP)
    entries = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        for std in (0.05, 0.1):
            path = folder / snapshot_filename(step * 64, std)
            digest = save_model(path, net, {"network": MLP, "nimg": step * 64, "ema_std": std, "source": "test"})
            entries.append(Snapshot(path, step * 64, std, digest))
    write_index(folder, MLP, [], entries)
    return folder


def test_snapshots_are_checked_against_the_index(tmp_path, capsys):
    folder = snapshot_folder(tmp_path / "run" / "phema")
    entries = read_index(folder).entries
    assert all(e.sha256 for e in entries) and read_snapshot(entries[0]).keys() == build_network(MLP).state_dict().keys()

    # bytes flipped inside a snapshot's tensor data: the reconstruction refuses, naming the file
    flip_byte(entries[-1].path)
    with pytest.raises(SystemExit) as exit_info:
        rec.main([str(folder), "--std", "0.07", "--out-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and entries[-1].path.name in err[0] and "SHA-256" in err[0]
    assert not list((tmp_path / "out").glob("*.safetensors"))

    # a valid model file of another run in a snapshot's place: its digest is not the index's
    other = snapshot_folder(tmp_path / "other" / "phema", steps=2, seed=1)
    shutil.copy(read_index(other).entries[0].path, entries[0].path)
    with pytest.raises(ModelFileError, match=rf"{entries[0].path.name}: SHA-256 .* differs from the one in .*index"):
        read_snapshot(entries[0])


def checkpoint(scale: float = 1.0) -> dict:
    return {"state_dict": {"w": torch.full((64,), scale)}, "optimizer_states": [{"exp_avg": torch.zeros(3)}], "nimg": 5}


def test_checkpoint_sidecar_verified_on_load(tmp_path):
    io = AtomicCheckpointIO()
    path = checkpoint_path(tmp_path, 128)
    io.save_checkpoint(checkpoint(), path)
    sidecar = sidecar_path(path).read_text()
    assert sidecar == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"  # sha256sum -c format
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(64))
    flip_byte(path, 200)
    with pytest.raises(CheckpointError, match=rf"{path.name}: SHA-256 differs from {path.name}\.sha256"):
        io.load_checkpoint(path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a readable checkpoint"):
        io.load_checkpoint(text)


def test_non_finite_checkpoint_is_not_written(tmp_path):
    state = checkpoint()
    state["optimizer_states"][0]["exp_avg"][1] = float("nan")
    path = checkpoint_path(tmp_path, 64)
    with pytest.raises(NonFiniteError, match=r"nimg-000000000064\.ckpt: refusing to write .*states\[0\]\.exp_avg"):
        AtomicCheckpointIO().save_checkpoint(state, path)
    assert not path.parent.exists() or list(path.parent.iterdir()) == []


def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    io = AtomicCheckpointIO()
    paths = [checkpoint_path(tmp_path, n) for n in (64, 128, 192)]
    for i, path in enumerate(paths):
        io.save_checkpoint(checkpoint(i), path)
    paths[2].write_bytes(paths[2].read_bytes()[:100])  # truncated
    flip_byte(paths[1], 300)  # garbled
    with caplog.at_level(logging.WARNING, logger="autoguide.train.checkpoint"):
        assert newest_intact_checkpoint(tmp_path) == paths[0]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and paths[2].name in warnings[0] and paths[1].name in warnings[1]
    assert all("resuming from the older nimg-000000000064.ckpt" in w for w in warnings)
    paths[0].write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*000000000192\.ckpt.*000000000064\.ckpt"):
        newest_intact_checkpoint(tmp_path)


def run_on_tiny_disk(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` (with ``DISK`` the folder) in a private mount namespace with a 1 MiB tmpfs."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "child.py"
    script.write_text(f"from pathlib import Path\nDISK = Path({str(disk)!r})\n" + textwrap.dedent(code))
    probe = subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "none", str(disk)], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=1m none "{disk}" && exec "{sys.executable}" {script}'],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_full_disk_gives_one_line_naming_the_file_and_leaves_no_temp_file(tmp_path):
    result = run_on_tiny_disk(
        tmp_path,
        """
        import torch
        from autoguide.runtime.claim import claim_folder
        from autoguide.io.atomic import DiskFullError
        from autoguide.train.checkpoint import AtomicCheckpointIO
        path = DISK / "checkpoints" / "nimg-000000000064.ckpt"
        try:
            AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2**19)}, path)  # 2 MiB on a 1 MiB disk
        except DiskFullError as error:
            print("CKPT", error)
        with open(DISK / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"x" * 512)
            except OSError:
                pass
        try:
            claim_folder(DISK / "run")
        except DiskFullError as error:
            print("CLAIM", error)
        print("LEFT", sorted(str(p.relative_to(DISK)) for p in DISK.rglob("*") if p.is_file() and p.name != "filler"))
    """,
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines.keys() == {"CKPT", "CLAIM", "LEFT"}, result.stdout + result.stderr
    assert "nimg-000000000064.ckpt: no space left on device" in lines["CKPT"]
    assert ".autoguide-claim.json: no space left on device" in lines["CLAIM"]
    assert lines["LEFT"] == "[]"  # no checkpoint, no sidecar, no temporary or 0-byte lease file
