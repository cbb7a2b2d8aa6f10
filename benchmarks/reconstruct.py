"""Benchmark post-hoc EMA reconstruction: time and peak memory to rebuild 8 EMA stds from
16 and from 64 snapshot files of the mc=64 EDM2 UNet (32x32x3, 10 classes), side by side.

Snapshot files hold random-walk weights (the content does not change the cost). Each
reconstruction runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its
own; the table shows it above the process's baseline after imports, also in units of one
model file, to show that memory depends on the outputs per pass, not on the snapshot count.

    python benchmarks/reconstruct.py [--snapshots 16,64] [--stds 0.06:0.13:0.01] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NETWORK = {
    "arch": "unet", "img_resolution": 32, "img_channels": 3, "label_dim": 10,
    "model_channels": 64, "channel_mult": [1, 2, 3, 4], "num_blocks": 3, "attn_resolutions": [16, 8],
}
STORED_STDS = (0.05, 0.10)
STEP_NIMG = 2**20  # one snapshot time per Mi images


def write_snapshots(folder: Path, files: int) -> int:
    """``files`` snapshot files (``files // 2`` times x 2 stds) plus the index; returns the
    size of one model file in bytes."""
    from autoguide.ema.snapshots import Snapshot, snapshot_filename, write_index
    from autoguide.io import save_model
    from autoguide.nets import build_network

    torch.manual_seed(0)
    net = build_network(NETWORK)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    buffers = [k for k, _ in net.named_buffers()]
    folder.mkdir(parents=True)
    entries = []
    for k in range(1, files // 2 + 1):
        for key, value in state.items():
            if key not in buffers:
                value.add_(0.01 * torch.randn_like(value))
        for std in STORED_STDS:
            path = folder / snapshot_filename(k * STEP_NIMG, std)
            card = {"format": "autoguide-model/1", "network": NETWORK, "nimg": k * STEP_NIMG,
                    "ema_std": std, "source": "benchmark"}
            save_model(path, state, card)
            entries.append(Snapshot(path, k * STEP_NIMG, std))
    write_index(folder, NETWORK, buffers, entries)
    return entries[0].path.stat().st_size


def child(folder: Path, stds: list[float], out_dir: Path, batch: int) -> None:
    """Run one reconstruction; print JSON with seconds and peak RSS before/after."""
    from autoguide.ema.posthoc import reconstruct

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    written = reconstruct([folder], stds, out_dir=out_dir, batch=batch, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "base": base, "peak": peak, "outputs": len(written)}))


def main() -> None:
    from autoguide.apps.reconstruct import parse_stds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", default="16,64", help="snapshot-file counts to compare")
    parser.add_argument("--stds", type=parse_stds, default=parse_stds("0.06:0.13:0.01"))
    parser.add_argument("--batch", type=int, default=8, help="outputs per pass")
    parser.add_argument("--workdir", type=Path, help="where to write snapshots (default: a temp dir)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.stds, args.out, args.batch)
        return

    counts = [int(c) for c in args.snapshots.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="phema-bench-"))
    rows = []
    try:
        for count in counts:
            folder = work / f"snap{count}" / "phema"
            t0 = time.perf_counter()
            model_bytes = write_snapshots(folder, count)
            print(f"wrote {count} snapshot files of {model_bytes / 2**20:.1f} MiB in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            stds = ",".join(f"{s:g}" for s in args.stds)
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), "--stds", stds,
                 "--out", str(work / f"out{count}"), "--batch", str(args.batch)],
                check=True, capture_output=True, text=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((count, model_bytes, result))
            shutil.rmtree(folder.parent)
            shutil.rmtree(work / f"out{count}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nreconstructing {len(args.stds)} stds ({args.batch} per pass), "
          f"mc=64 UNet ({NETWORK['img_resolution']}x{NETWORK['img_resolution']}x3, label_dim 10)")
    print(f"{'snapshot files':>15} {'time (s)':>9} {'peak RSS (MiB)':>15} {'above base (MiB)':>17} "
          f"{'above base (models)':>20}")
    for count, model_bytes, r in rows:
        extra = r["peak"] - r["base"]
        print(f"{count:>15} {r['seconds']:>9.1f} {r['peak'] / 2**20:>15.0f} {extra / 2**20:>17.0f} "
              f"{extra / model_bytes:>20.1f}")


if __name__ == "__main__":
    main()
