"""``autoguide-reconstruct``: rebuild power-function EMAs of any length at any stored time
from post-hoc EMA snapshots (Karras et al. 2024, EDM2, Sec. 3.2).

For target std ``s`` at time ``T`` the weights are ``sum_i c_i theta_i`` over the snapshots
``theta_i`` with ``0 < nimg_i <= T``, with ``c = power.solve_coefficients(...)``. Snapshots
are streamed: one snapshot file is in memory at a time and the outputs of a pass are
accumulated in float64 (so a pass holds ``--batch`` outputs in float64 plus one snapshot,
whatever the number of snapshots). Buffers and non-float tensors are copied from the latest
contributing snapshot. Each output is an ordinary autoguide model file.

    autoguide-reconstruct runs/s/phema --std 0.05:0.15:0.01 --at-fraction 1/16 --plot p.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autoguide.ema.power import MAX_SIGMA_REL, profile_error, solve_coefficients
from autoguide.ema.snapshots import Snapshot, read_index
from autoguide.io import read_card, read_model_file, save_model

MODEL_FORMAT = "autoguide-model/1"
DEFAULT_MAX_ERROR = 0.05


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


# ------------------------------------------------------------------------ argument parsing
def parse_stds(text: str) -> list[float]:
    """Parse ``0.05,0.07,0.1`` and inclusive ranges ``start:stop:step`` (mixable by commas).

    Every value must be a valid EMA std, ``0 < s <= MAX_SIGMA_REL``; duplicates are dropped.
    """
    values: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        fields = part.split(":")
        try:
            nums = [float(f) for f in fields]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or start:stop:step range: {part!r}")
        if len(nums) == 1:
            values.append(nums[0])
        elif len(nums) == 3 and nums[2] > 0 and nums[1] >= nums[0]:
            start, stop, step = nums
            count = math.floor((stop - start) / step + 1e-9) + 1
            values.extend(round(start + i * step, 12) for i in range(count))
        else:
            raise argparse.ArgumentTypeError(
                f"range must be start:stop:step with step > 0 and stop >= start, got {part!r}"
            )
    for s in values:
        if not 0.0 < s <= MAX_SIGMA_REL:
            raise argparse.ArgumentTypeError(
                f"EMA std {s:g} outside the power-EMA range (0, {MAX_SIGMA_REL:.4f}]"
            )
    if not values:
        raise argparse.ArgumentTypeError(f"no EMA std in {text!r}")
    return list(dict.fromkeys(values))


def parse_fraction(text: str) -> float:
    """``1/16`` or ``0.0625``; must lie in (0, 1]."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (use e.g. 1/16 or 0.25)")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"fraction must lie in (0, 1], got {text!r}")
    return value


def parse_nimg(text: str) -> int:
    """A positive image count; ``8388608`` or ``8.388608e6``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an image count: {text!r}")
    if not (value > 0 and value == int(value)):
        raise argparse.ArgumentTypeError(f"image count must be a positive integer, got {text!r}")
    return int(value)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


# --------------------------------------------------------------------------- snapshot sets
@dataclass(frozen=True)
class SnapshotSet:
    """Snapshots of one architecture, merged from one or more snapshot folders."""

    network: dict[str, Any]
    buffers: frozenset[str]
    snapshots: tuple[Snapshot, ...]  # sorted by (nimg, std)


def collect_snapshots(folders: Sequence[Path]) -> SnapshotSet:
    """Read the indexes of ``folders``; refuse mixed architectures and duplicated snapshots."""
    indexes = [read_index(Path(f)) for f in folders]
    first = indexes[0]
    for index in indexes[1:]:
        if _as_json(index.network) != _as_json(first.network):
            raise ValueError(
                f"{index.folder / 'index.json'}: network architecture differs from "
                f"{first.folder / 'index.json'}; snapshots of different architectures cannot be mixed"
            )
        if set(index.buffers) != set(first.buffers):
            raise ValueError(
                f"{index.folder / 'index.json'}: buffer list differs from "
                f"{first.folder / 'index.json'}"
            )
    seen: dict[tuple[int, float], Path] = {}
    for index in indexes:
        for entry in index.entries:
            key = (entry.nimg, entry.std)
            if key in seen:
                raise ValueError(
                    f"snapshot nimg={entry.nimg} std={entry.std:g} appears twice: {seen[key]} "
                    f"and {entry.path}; remove one of them (e.g. the abandoned part of a resumed run)"
                )
            seen[key] = entry.path
    snapshots = tuple(
        sorted((e for i in indexes for e in i.entries), key=lambda e: (e.nimg, e.std))
    )
    if not snapshots:
        raise ValueError(f"no snapshots listed in {', '.join(str(f) for f in folders)}")
    return SnapshotSet(first.network, frozenset(first.buffers), snapshots)


def check_snapshot_files(snapshots: Sequence[Snapshot], network: dict[str, Any]) -> None:
    """Header-only check of every file: present, not truncated, and its card agrees with the
    index (architecture, nimg, ema_std). Errors name the file."""
    expected = _as_json(network)
    for snap in snapshots:
        card = read_card(snap.path)
        if _as_json(card.get("network")) != expected:
            raise ValueError(
                f"{snap.path}: network architecture differs from the snapshot index; "
                "snapshots of different architectures cannot be mixed"
            )
        std = card.get("ema_std")
        if card.get("nimg") != snap.nimg or std is None or abs(float(std) - snap.std) > 1e-12:
            raise ValueError(
                f"{snap.path}: card says nimg={card.get('nimg')} ema_std={std}, "
                f"index says nimg={snap.nimg} std={snap.std:g}"
            )


def resolve_target_nimg(
    snapshots: Sequence[Snapshot], at_nimg: int | None, at_fraction: float | None
) -> int:
    """Target time: ``at_nimg``; or the snapshot time nearest ``at_fraction`` of the last
    snapshot's nimg; or (default) the last snapshot's nimg. Never beyond the last snapshot."""
    times = sorted({s.nimg for s in snapshots})
    last = times[-1]
    if at_fraction is not None:
        wanted = at_fraction * last
        return min(times, key=lambda t: (abs(t - wanted), t))
    if at_nimg is None:
        return last
    if at_nimg > last:
        raise ValueError(
            f"--at-nimg {at_nimg} is beyond the last snapshot (nimg {last}); post-hoc EMA "
            "can only rebuild times the stored snapshots cover"
        )
    if at_nimg <= 0:
        raise ValueError(f"--at-nimg must be positive, got {at_nimg}")
    return at_nimg


def representable_range(
    in_nimg: np.ndarray, in_std: np.ndarray, target_nimg: int, max_error: float
) -> tuple[float, float] | None:
    """Smallest and largest std on a 0.005 grid whose profile error is within ``max_error``."""
    grid = np.round(np.arange(0.005, MAX_SIGMA_REL, 0.005), 3)
    coefs = solve_coefficients(in_nimg, in_std, np.full(len(grid), target_nimg), grid)
    errors = profile_error(in_nimg, in_std, np.full(len(grid), target_nimg), grid, coefs)
    ok = grid[errors <= max_error]
    return (float(ok.min()), float(ok.max())) if ok.size else None


# ------------------------------------------------------------------------- reconstruction
def _load_snapshot(snap: Snapshot) -> dict[str, torch.Tensor]:
    state, _card = read_model_file(snap.path)
    return state


def _accumulate(
    state: dict[str, torch.Tensor],
    weights: torch.Tensor,
    sums: dict[str, torch.Tensor],
    copies: list[dict[str, torch.Tensor]],
    buffers: frozenset[str],
) -> None:
    """``sums[key][k] += weights[k] * state[key]`` (float64, one ``addr_`` per tensor for the
    whole batch of outputs) for averaged tensors; buffers and non-float tensors are copied
    into ``copies[k]`` for outputs with a non-zero weight (the caller goes forward in time,
    so the last copy wins)."""
    for key, value in state.items():
        if value.is_floating_point() and key not in buffers:
            flat = value.reshape(-1).to(torch.float64)
            if key not in sums:
                sums[key] = torch.zeros(len(weights), flat.numel(), dtype=torch.float64)
            sums[key].addr_(weights, flat)
        else:
            for k, c in enumerate(weights.tolist()):
                if c != 0.0:
                    copies[k][key] = value.clone()


def stream_reconstruct(
    snapshots: Sequence[Snapshot],
    coefs: np.ndarray,
    buffers: frozenset[str],
    batch: int,
    progress: bool = True,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(j, state_dict)`` with ``state_dict = sum_i coefs[i, j] snapshot_i``.

    Outputs are built ``batch`` at a time; each pass reads every snapshot with a non-zero
    coefficient once, one file at a time (snapshots in time order), and accumulates in
    float64. Buffer entries and non-float tensors come from the latest snapshot with a
    non-zero coefficient.
    """
    n_out = coefs.shape[1]
    passes = math.ceil(n_out / batch)
    for p in range(passes):
        cols = list(range(p * batch, min((p + 1) * batch, n_out)))
        rows = [i for i in range(len(snapshots)) if np.any(coefs[i, cols] != 0)]
        sums: dict[str, torch.Tensor] = {}
        copies: list[dict[str, torch.Tensor]] = [{} for _ in cols]
        layout: dict[str, tuple[torch.Size, torch.dtype]] | None = None
        bar = tqdm(rows, desc=f"pass {p + 1}/{passes}", unit="snapshot", disable=not progress)
        for i in bar:
            state = _load_snapshot(snapshots[i])
            found = {k: (v.shape, v.dtype) for k, v in state.items()}
            if layout is None:
                layout = found
            elif found != layout:
                raise ValueError(
                    f"{snapshots[i].path}: tensor names, shapes or dtypes differ from "
                    f"{snapshots[rows[0]].path}"
                )
            weights = torch.from_numpy(np.ascontiguousarray(coefs[i, cols], dtype=np.float64))
            _accumulate(state, weights, sums, copies, buffers)
            del state
        assert layout is not None
        for k, j in enumerate(cols):
            out = {
                key: sums[key][k].view(shape).to(dtype) if key in sums else copies[k][key]
                for key, (shape, dtype) in layout.items()
            }
            copies[k] = {}
            yield j, out


def reconstruct(
    folders: Sequence[Path],
    stds: Sequence[float],
    at_nimg: int | None = None,
    at_fraction: float | None = None,
    out_dir: Path | None = None,
    batch: int = 8,
    max_error: float = DEFAULT_MAX_ERROR,
    plot: Path | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Rebuild the EMAs ``stds`` at one time from the snapshot ``folders``; write one model
    file per std to ``out_dir`` (default ``<parent of first folder>/reconstructed``) and
    return their paths. Refuses (``ValueError``/``FileNotFoundError``, naming the file or
    value) mixed architectures, missing/truncated/mismatched files, a time beyond the last
    snapshot, and stds whose profile the snapshots reproduce worse than ``max_error``
    (relative L2 error, ``power.profile_error``)."""
    folders = [Path(f) for f in folders]
    found = collect_snapshots(folders)
    target = resolve_target_nimg(found.snapshots, at_nimg, at_fraction)
    used = [s for s in found.snapshots if 0 < s.nimg <= target]
    check_snapshot_files(used, found.network)
    in_nimg = np.array([s.nimg for s in used], dtype=np.float64)
    in_std = np.array([s.std for s in used], dtype=np.float64)
    out_std = np.array(stds, dtype=np.float64)
    out_nimg = np.full(len(out_std), float(target))
    coefs = solve_coefficients(in_nimg, in_std, out_nimg, out_std)
    errors = profile_error(in_nimg, in_std, out_nimg, out_std, coefs)
    if plot is not None:
        from autoguide.ema.plot import plot_profiles

        plot_profiles(Path(plot), in_nimg, in_std, coefs, float(target), out_std)
    bad = [f"{s:g} (error {e:.3g})" for s, e in zip(out_std, errors) if e > max_error]
    if bad:
        span = representable_range(in_nimg, in_std, target, max_error)
        stored = sorted(set(in_std.tolist()))
        hint = (
            f"stds from about {span[0]:g} to {span[1]:g} are representable there"
            if span
            else "no std is representable there"
        )
        times = sorted({s.nimg for s in found.snapshots})
        if target not in times:
            after = [t for t in times if t > target][:1]
            hint += (
                f"; nimg {target} is not a snapshot time (nearest: "
                f"{', '.join(str(t) for t in [int(in_nimg.max()), *after])})"
            )
        raise ValueError(
            f"cannot represent EMA std {', '.join(bad)} at nimg {target} with the stored stds "
            f"{stored} ({len(used)} snapshots up to nimg {int(in_nimg.max())}): the relative "
            f"profile error exceeds --max-error {max_error:g}; {hint}"
        )
    for s, e in zip(out_std, errors):
        print(f"std {s:.4f} at nimg {target}: profile error {e:.2e}, {len(used)} snapshots")
    if dry_run:
        return []
    out_dir = Path(out_dir) if out_dir is not None else folders[0].resolve().parent / "reconstructed"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for j, state in stream_reconstruct(used, coefs, found.buffers, batch, progress):
        path = out_dir / f"ema-{target:012d}-{out_std[j]:.4f}.safetensors"
        card = {
            "format": MODEL_FORMAT,
            "network": found.network,
            "nimg": target,
            "ema_std": float(out_std[j]),
            "source": (
                f"post-hoc EMA reconstruction from {len(used)} snapshots in "
                f"{', '.join(str(f) for f in folders)} (profile error {errors[j]:.2e})"
            ),
        }
        save_model(path, state, card)
        written.append(path)
        print(f"wrote {path}")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoguide-reconstruct",
        description="Rebuild power-function EMAs of any length from post-hoc EMA snapshots.",
    )
    parser.add_argument(
        "folders", nargs="+", type=Path,
        help="snapshot folder(s) with index.json (a run's phema/; several for a resumed run)",
    )
    parser.add_argument(
        "--std", required=True, type=parse_stds,
        help="target EMA stds: 0.05,0.07,0.1 and/or inclusive ranges 0.05:0.15:0.01",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--at-nimg", type=parse_nimg, help="target time in images (default: last snapshot)")
    when.add_argument(
        "--at-fraction", type=parse_fraction,
        help="target time as a fraction of the last snapshot's nimg, e.g. 1/16 (nearest snapshot)",
    )
    parser.add_argument("--out-dir", type=Path, help="default: <run>/reconstructed next to the first folder")
    parser.add_argument("--batch", type=_positive_int, default=8, help="outputs per pass over the snapshots (memory)")
    parser.add_argument(
        "--max-error", type=_positive_float, default=DEFAULT_MAX_ERROR,
        help="largest accepted relative L2 error of a reconstructed EMA profile",
    )
    parser.add_argument("--plot", type=Path, help="draw target and reconstructed profiles to this image")
    parser.add_argument("--dry-run", action="store_true", help="solve, report and plot; write no models")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``autoguide-reconstruct`` / ``python -m autoguide.ema.reconstruct``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        reconstruct(
            args.folders, args.std, at_nimg=args.at_nimg, at_fraction=args.at_fraction,
            out_dir=args.out_dir, batch=args.batch, max_error=args.max_error, plot=args.plot,
            dry_run=args.dry_run, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"autoguide-reconstruct: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
