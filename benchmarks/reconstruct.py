"""Benchmark post-hoc EMA reconstruction: time and peak memory to rebuild EMA stds from a
folder of snapshots of the mc=64 EDM2 UNet (32x32x3, 10 classes, 29.7 M parameters, 113 MiB in
float32), read as EDM2 raw snapshots (fp16 pickles, ``--format raw``) or as autoguide snapshot
files (float32 safetensors, ``--format native``), at the last snapshot time and at earlier times
(``--at``), so that one folder compares several snapshot counts side by side.

Snapshots hold random-walk weights (the content does not change the cost). Each reconstruction
runs in a fresh subprocess; after its imports the subprocess resets its peak resident memory
(``/proc/self/clear_refs``, Linux) and reads its resident memory (``VmRSS``) as the baseline;
the table shows the peak (``VmHWM``) above that baseline, in MiB and in float32 model sizes,
beside the bound ``batch + 2``.

    python benchmarks/reconstruct.py --format raw --snapshots 128 --at 1/4,1 --batch 8
    python benchmarks/reconstruct.py --format native --snapshots 32 --baseline-src ../main/src

``--baseline-src`` also runs each reconstruction with another autoguide source tree (e.g. a
checkout before a change), side by side on the same folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import NETWORK

STORED_STDS = (0.05, 0.10)
STEP_NIMG = 2**24  # one snapshot time per 16 Mi images (EDM2 XS: 8 Mi)


def random_walk(files: int):
    """``(network, [((nimg, std), state_dict)])``: ``files // 2`` times x 2 stds."""
    from autoguide.nets import build_network

    torch.manual_seed(0)
    net = build_network(NETWORK)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    buffers = {k for k, _ in net.named_buffers()}
    for k in range(1, files // 2 + 1):
        for key, value in state.items():
            if key not in buffers:
                value.add_(0.01 * torch.randn_like(value))
        for std in STORED_STDS:
            yield net, (k * STEP_NIMG, std), state


def write_native(folder: Path, files: int) -> None:
    """Autoguide snapshot files and their index."""
    from autoguide.ema.snapshots import Snapshot, snapshot_filename, write_index
    from autoguide.io import save_model

    folder.mkdir(parents=True)
    entries, buffers = [], []
    for net, (nimg, std), state in random_walk(files):
        path = folder / snapshot_filename(nimg, std)
        save_model(path, state, {"network": NETWORK, "nimg": nimg, "ema_std": std, "source": "benchmark"})
        entries.append(Snapshot(path, nimg, std))
        buffers = [k for k, _ in net.named_buffers()]
    write_index(folder, NETWORK, buffers, entries)


def write_raw(folder: Path, files: int) -> None:
    """EDM2 raw snapshots (fp16 pickles named ``network-snapshot-<kimg>-<std>.pkl``), written with
    the tests' EDM2 pickle writer."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from edm2_pickles import fake_edm2_modules, raw_snapshot_name, write_release

    folder.mkdir(parents=True)
    with fake_edm2_modules(folder.parent / "code-was-executed") as fake:
        for net, (nimg, std), state in random_walk(files):
            net.load_state_dict(state)
            write_release(fake, folder / raw_snapshot_name(nimg, std), net, encoder="rgb")


def memory(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def max_error(ema, solution, written: list[Path]) -> float:
    """Largest relative L2 error, over the averaged tensors of the first and the last output, of
    the written float32 files against the float64 sum ``sum_i c_i theta_i`` (files read again)."""
    from autoguide.io import read_model_file

    picks = sorted({0, len(written) - 1})
    outputs = [read_model_file(written[j])[0] for j in picks]
    sums: list[dict[str, torch.Tensor]] = [{} for _ in picks]
    for i, snap in enumerate(solution.used):
        state = ema.source.read(snap)
        for sum_, j in zip(sums, picks, strict=True):
            for key, value in state.items():
                if key not in ema.found.buffers and value.is_floating_point():
                    term = float(solution.coefs[i, j]) * value.double()
                    sum_[key] = sum_[key] + term if key in sum_ else term
    errors = [
        (out[k].double() - r).norm() / r.norm()
        for out, sum_ in zip(outputs, sums, strict=True)
        for k, r in sum_.items()
    ]
    return float(max(errors))


def child(folder: Path, stds: list[float], at: str, out_dir: Path, batch: int, check: bool) -> None:
    """Run one reconstruction; print JSON with seconds, snapshots used and peak RSS before/after
    (and with ``check`` the largest error against the float64 sum, measured afterwards)."""
    from autoguide.ema.posthoc import PosthocEMA

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    base = memory("VmRSS")
    start = time.perf_counter()
    ema = PosthocEMA(folder)
    solution = ema.solve(stds, at)
    written = list(ema.write_solution(solution, out_dir, batch))
    seconds = time.perf_counter() - start
    peak = memory("VmHWM")
    result = {"seconds": seconds, "base": base, "peak": peak, "outputs": len(written), "used": len(solution.used)}
    if check:
        result["error"] = max_error(ema, solution, written)
    print(json.dumps(result))


def main() -> None:
    from autoguide.apps.reconstruct import parse_stds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=["raw", "native"], default="raw", help="EDM2 raw or autoguide snapshots")
    parser.add_argument("--snapshots", type=int, default=128, help="snapshot files in the folder (half per stored std)")
    parser.add_argument("--at", default="1/4,1", help="target times (fractions of the last snapshot), side by side")
    parser.add_argument("--stds", type=parse_stds, default=parse_stds("0.06:0.13:0.01"))
    parser.add_argument("--batch", type=int, default=8, help="outputs per pass")
    parser.add_argument("--baseline-src", type=Path, help="also run with this autoguide source tree (PYTHONPATH)")
    parser.add_argument("--check", action="store_true", help="also measure this code's error against the float64 sum")
    parser.add_argument("--workdir", type=Path, help="where to write snapshots (default: a temp dir)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.stds, args.at, args.out, args.batch, args.check)
        return

    from autoguide.nets import build_network

    with torch.device("meta"):
        model_bytes = 4 * sum(v.numel() for v in build_network(NETWORK).state_dict().values())
    work = args.workdir or Path(tempfile.mkdtemp(prefix="phema-bench-"))
    folder = work / "snapshots"
    rows = []
    try:
        t0 = time.perf_counter()
        (write_raw if args.format == "raw" else write_native)(folder, args.snapshots)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**30
        seconds = time.perf_counter() - t0
        print(f"wrote {args.snapshots} {args.format} snapshot files ({size:.1f} GiB) in {seconds:.0f} s", flush=True)
        stds = ",".join(f"{s:g}" for s in args.stds)
        sources = [("this", None)] + ([("baseline", args.baseline_src.resolve())] if args.baseline_src else [])
        for at in args.at.split(","):
            for label, src in sources:
                out = work / "out"
                env = {**os.environ, "PYTHONPATH": str(src)} if src else None
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(folder),
                        "--stds",
                        stds,
                        "--at",
                        at,
                        "--out",
                        str(out),
                        "--batch",
                        str(args.batch),
                        *(["--check"] if args.check and not src else []),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if done.returncode:
                    raise SystemExit(f"reconstruction at {at} ({label}) failed:\n{done.stderr}")
                rows.append((at, label, json.loads(done.stdout.strip().splitlines()[-1])))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    bound = min(args.batch, len(args.stds)) + 2
    print(
        f"\nreconstructing {len(args.stds)} stds ({args.batch} per pass) from {args.format} snapshots, mc=64 UNet "
        f"({model_bytes / 2**20:.0f} MiB in float32); bound: batch + 2 = {bound} model sizes"
    )
    print(
        f"{'time':>6} {'code':>9} {'files used':>11} {'seconds':>8} {'peak RSS (MiB)':>15} {'above base (MiB)':>17} "
        f"{'above base (models)':>20} {'max rel. L2 error':>18}"
    )
    for at, label, r in rows:
        extra = r["peak"] - r["base"]
        print(
            f"{at:>6} {label:>9} {r['used']:>11} {r['seconds']:>8.1f} {r['peak'] / 2**20:>15.0f} "
            f"{extra / 2**20:>17.0f} {extra / model_bytes:>20.2f} {r.get('error', float('nan')):>18.2e}"
        )


if __name__ == "__main__":
    main()
