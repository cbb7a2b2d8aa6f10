"""What the file integrity checks cost, side by side with the writes they guard, on one file of
``--mib`` MiB (default 250) of float32 tensors:

- checkpoint write: the atomic write as it was before these checks (temporary file,
  ``torch.save``, fsync, rename) against ``AtomicCheckpointIO`` (the same, plus the non-finite
  check, the SHA-256 hashed from the page cache during fsync, and the sidecar);
- checkpoint verify: SHA-256 of the written file (``verify_checkpoint``, on every resume);
- model file: ``save_file`` against ``save_model`` (non-finite check + card digest), and the
  digest alone (``state_sha256``, what a reader recomputes).

Rounds are interleaved (plain, guarded, plain, ...), medians printed with their ratios.

    python benchmarks/integrity_cost.py --mib 250 --rounds 3 --dir /tmp
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from autoguide.io import atomic_path, save_model
from autoguide.io.integrity import check_finite, state_sha256, tensors_in
from autoguide.train.checkpoint import AtomicCheckpointIO, verify_checkpoint

MLP = {"arch": "mlp", "img_channels": 2, "label_dim": 0, "width": 16, "depth": 2}


def unchecked_save(checkpoint: dict, path: Path) -> None:
    """``AtomicCheckpointIO.save_checkpoint`` before the integrity checks."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=250, help="file size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to write (a real disk)")
    args = parser.parse_args()
    count = args.mib * 2**20 // 4
    state = {f"w{i}": torch.randn(count // 25) for i in range(25)}
    checkpoint = {"state_dict": state, "nimg": 0}
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="integrity-cost-"))
    plain_path, guarded_path = folder / "plain.ckpt", folder / "nimg-000000000000.ckpt"
    io = AtomicCheckpointIO()
    names = (
        "unchecked atomic write",
        "AtomicCheckpointIO",
        "verify (SHA-256 of file)",
        "isfinite check",
        "save_file",
        "save_model",
        "state_sha256",
    )
    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(args.rounds):
        times["unchecked atomic write"].append(seconds(lambda: unchecked_save(checkpoint, plain_path)))
        times["AtomicCheckpointIO"].append(seconds(lambda: io.save_checkpoint(checkpoint, guarded_path)))
        times["verify (SHA-256 of file)"].append(seconds(lambda: verify_checkpoint(guarded_path)))
        times["isfinite check"].append(seconds(lambda: check_finite(tensors_in(checkpoint), "bench")))
        times["save_file"].append(seconds(lambda: save_file(state, str(folder / "plain.safetensors"))))
        times["save_model"].append(seconds(lambda: save_model(folder / "model.safetensors", state, {"network": MLP})))
        times["state_sha256"].append(seconds(lambda: state_sha256(state, {"network": MLP})))
    size = guarded_path.stat().st_size / 2**20
    print(f"{size:.0f} MiB checkpoint, {args.rounds} interleaved rounds, medians; folder {folder}")
    base = {"checkpoint": statistics.median(times[names[0]]), "model": statistics.median(times["save_file"])}
    for name, values in times.items():
        against = "model" if name in ("save_file", "save_model", "state_sha256") else "checkpoint"
        median = statistics.median(values)
        print(f"{name:26s} {median:7.3f} s  {median / base[against]:5.2f} x unchecked {against} write")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()
