"""``autoguide-reconstruct``: rebuild power-function EMAs of any length at any stored time from
post-hoc EMA snapshots (``autoguide.ema.posthoc.PosthocEMA``): a run's ``phema/`` folder(s) or a
folder of EDM2 raw snapshots (``network-snapshot-<kimg>-<std>.pkl``, ``autoguide.ema.edm2_snapshots``).

    autoguide-reconstruct runs/s/phema --std 0.05:0.15:0.01 --at-fraction 1/16 --plot p.png
    autoguide-reconstruct raw-snapshots/edm2-img512-xs --std 0.135 --at-fraction 1/16
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from autoguide.ema.posthoc import DEFAULT_MAX_ERROR, PosthocEMA, fraction
from autoguide.ema.power import MAX_SIGMA_REL
from autoguide.io.atomic import DiskFullError
from autoguide.runtime.claim import FolderBusy


def parse_stds(text: str) -> list[float]:
    """Parse ``0.05,0.07,0.1`` and inclusive ranges ``start:stop:step`` (mixable by commas).

    Every value must be a valid EMA std, ``0 < s <= MAX_SIGMA_REL``; duplicates are dropped.
    """
    values: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            nums = [float(f) for f in part.split(":")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or start:stop:step range: {part!r}") from None
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
            raise argparse.ArgumentTypeError(f"EMA std {s:g} outside the power-EMA range (0, {MAX_SIGMA_REL:.4f}]")
    if not values:
        raise argparse.ArgumentTypeError(f"no EMA std in {text!r}")
    return list(dict.fromkeys(values))


def parse_fraction(text: str) -> float:
    """``1/16`` or ``0.0625`` in (0, 1] (``autoguide.ema.posthoc.fraction``), for argparse."""
    try:
        return fraction(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _argument(parse, what: str):
    """An argparse type from a parser that raises ``ValueError``."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None

    return convert


def _positive_int(text: str) -> int:
    if int(text) <= 0:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    if not float(text) > 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoguide-reconstruct",
        description="Rebuild power-function EMAs of any length from post-hoc EMA snapshots.",
    )
    parser.add_argument(
        "folders",
        nargs="+",
        type=Path,
        help="snapshot folder(s) with index.json (a run's phema/; several for a resumed run) or of EDM2 raw snapshots",
    )
    parser.add_argument(
        "--std",
        required=True,
        type=parse_stds,
        help="target EMA stds: 0.05,0.07,0.1 and/or inclusive ranges 0.05:0.15:0.01",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--at-nimg", type=_argument(_positive_int, "image count"), help="target time in images (default: last snapshot)"
    )
    when.add_argument(
        "--at-fraction",
        type=parse_fraction,
        help="target time as a fraction of the last snapshot's nimg, e.g. 1/16 (nearest snapshot)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="default: <run>/reconstructed next to the first folder (inside a folder of EDM2 raw snapshots)",
    )
    parser.add_argument(
        "--batch",
        type=_argument(_positive_int, "batch"),
        default=8,
        help="outputs per pass over the snapshots (memory)",
    )
    parser.add_argument(
        "--max-error",
        type=_argument(_positive_float, "max error"),
        default=DEFAULT_MAX_ERROR,
        help="largest accepted relative L2 error of a reconstructed EMA profile",
    )
    parser.add_argument("--plot", type=Path, help="draw target and reconstructed profiles to this image")
    parser.add_argument("--dry-run", action="store_true", help="solve, report and plot; write no models")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def reconstruct_command(args: argparse.Namespace) -> list[Path]:
    """Solve, report each profile's error, plot if asked, write the models unless a dry run."""
    ema = PosthocEMA(args.folders)
    time = args.at_nimg if args.at_nimg is not None else args.at_fraction
    solution = ema.solve(args.std, time, args.max_error)
    if args.plot is not None:
        from autoguide.ema.plot import plot_profiles

        in_nimg, in_std = solution.in_nimg.tolist(), solution.in_std.tolist()
        plot_profiles(args.plot, in_nimg, in_std, solution.coefs, float(solution.nimg), solution.stds)
    for std, error in zip(solution.stds, solution.errors, strict=True):
        print(f"std {std:.4f} at nimg {solution.nimg}: profile error {error:.2e}, {len(solution.used)} snapshots")
    if args.dry_run:
        return []
    written = []
    for path in ema.write_solution(solution, args.out_dir, args.batch, not args.no_progress):
        print(f"wrote {path}")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``autoguide-reconstruct``."""
    args = build_parser().parse_args(argv)
    try:
        reconstruct_command(args)
    except (ValueError, FileNotFoundError, FolderBusy, DiskFullError) as exc:
        print(f"autoguide-reconstruct: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
