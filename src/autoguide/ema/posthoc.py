"""Post-hoc EMA: "the EMA of length ``s`` at time ``t`` of run ``R``", rebuilt from the run's
snapshots (Karras et al. 2024, EDM2, Sec. 3.2), into memory or to model files.

``PosthocEMA(folders)`` reads a run's snapshot folder(s) (``phema/``; several for a run split
over folders) or a folder of EDM2 raw snapshots (``ema.edm2_snapshots``). For a target std ``s``
at time ``T`` the weights are ``sum_i c_i theta_i`` over the snapshots ``theta_i`` with
``0 < nimg_i <= T``, ``c = power.solve_coefficients(...)``; a std whose profile the snapshots
reproduce worse than ``max_error`` (relative L2 error, ``power.profile_error``) is refused,
naming the stds that are representable there. Snapshots are streamed (``stream_reconstruct``):
one snapshot file is in memory at a time and a pass holds ``batch`` float32 outputs and a
half-precision reference, at most ``batch + 2`` float32 model sizes whatever the number of
snapshots. Buffers and non-float tensors come from the latest contributing snapshot. Outputs
are ordinary autoguide model files.

- ``PosthocEMA.models(stds, time)``: ``(std, state_dict, card)`` in memory;
- ``PosthocEMA.write(stds, time, out_dir)``: model files ``ema-{nimg:012d}-{std:.4f}.safetensors``;
- ``ema.cache.ReconstructionCache``: files built once and kept (by run, time, std and solver).

Cards of rebuilt models carry the run's latent space (``latent``, from ``<run>/latent.json``)
when the run trained a latent model, so they decode like the run's final model.

Times (``EmaTime``): ``None`` is the last snapshot; a number ``t <= 1`` or a string ``"1/16"`` a
fraction of the last snapshot's nimg (the nearest snapshot time); a larger integer an image count.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autoguide.data.vae import read_run_latent
from autoguide.ema.edm2_snapshots import EDM2RawSnapshots, is_raw_snapshot_folder
from autoguide.ema.power import MAX_SIGMA_REL, profile_error, solve_coefficients
from autoguide.ema.snapshots import INDEX_NAME, Snapshot, read_index, read_snapshot
from autoguide.io import read_card, save_model
from autoguide.nets import network_config
from autoguide.runtime.claim import claim_folder

log = logging.getLogger(__name__)

DEFAULT_MAX_ERROR = 0.05
RECONSTRUCTED_DIR = "reconstructed"
EmaTime = int | float | str | None
OutDirs = str | os.PathLike | Sequence[str | os.PathLike] | None


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
        if network_config(index.network) != network_config(first.network):
            raise ValueError(
                f"{index.folder / 'index.json'}: network architecture differs from "
                f"{first.folder / 'index.json'}; snapshots of different architectures cannot be mixed"
            )
        if set(index.buffers) != set(first.buffers):
            raise ValueError(f"{index.folder / 'index.json'}: buffer list differs from {first.folder / 'index.json'}")
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
    snapshots = tuple(sorted((e for i in indexes for e in i.entries), key=lambda e: (e.nimg, e.std)))
    if not snapshots:
        raise ValueError(f"no snapshots listed in {', '.join(str(f) for f in folders)}")
    return SnapshotSet(first.network, frozenset(first.buffers), snapshots)


def check_snapshot_files(snapshots: Sequence[Snapshot], network: dict[str, Any]) -> None:
    """Header-only check of every file: present, not truncated, and its card agrees with the
    index (architecture, nimg, ema_std). Errors name the file."""
    expected = network_config(network)
    for snap in snapshots:
        card = read_card(snap.path)
        if network_config(card["network"]) != expected:
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


def fraction(text: str) -> float:
    """``1/16`` or ``0.0625``; must lie in (0, 1]."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a fraction: {text!r} (use e.g. 1/16 or 0.25)") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {text!r}")
    return value


def parse_time(value: EmaTime) -> tuple[int | None, float | None]:
    """``(at_nimg, at_fraction)`` of a time: None -> the last snapshot; ``t <= 1`` or ``"a/b"``
    -> a fraction of it; an integer > 1 -> an image count."""
    if value is None:
        return None, None
    if isinstance(value, str):
        try:
            return None, fraction(value)
        except ValueError as err:
            raise ValueError(f"EMA time {value!r}: {err}") from None
    if value <= 0:
        raise ValueError(f"EMA time must be positive, got {value!r}")
    if value <= 1:
        return None, float(value)
    if value != int(value):
        raise ValueError(f"EMA time {value!r}: an image count must be an integer (fractions are <= 1)")
    return int(value), None


def resolve_target_nimg(snapshots: Sequence[Snapshot], time: EmaTime = None) -> int:
    """The image count ``time`` means (``parse_time``): the snapshot time nearest a fraction of
    the last snapshot's nimg, an image count (never beyond the last snapshot), or the last."""
    at_nimg, at_fraction = parse_time(time)
    times = sorted({s.nimg for s in snapshots})
    last = times[-1]
    if at_fraction is not None:
        wanted = at_fraction * last
        return min(times, key=lambda t: (abs(t - wanted), t))
    if at_nimg is None:
        return last
    if at_nimg > last:
        raise ValueError(
            f"nimg {at_nimg} is beyond the last snapshot (nimg {last}); post-hoc EMA "
            "can only rebuild times the stored snapshots cover"
        )
    return at_nimg


def representable_ranges(
    in_nimg: np.ndarray, in_std: np.ndarray, target_nimg: int, max_error: float
) -> list[tuple[float, float]]:
    """The intervals ``(lowest, highest)`` of consecutive stds on a 0.005 grid whose profile
    error is within ``max_error`` (several when stds between them are not representable)."""
    grid = np.round(np.arange(0.005, MAX_SIGMA_REL, 0.005), 3)
    coefs = solve_coefficients(in_nimg, in_std, np.full(len(grid), target_nimg), grid)
    errors = profile_error(in_nimg, in_std, np.full(len(grid), target_nimg), grid, coefs)
    ranges: list[tuple[float, float]] = []
    for i in np.flatnonzero(errors <= max_error):
        if ranges and i > 0 and errors[i - 1] <= max_error:
            ranges[-1] = (ranges[-1][0], float(grid[i]))
        else:
            ranges.append((float(grid[i]), float(grid[i])))
    return ranges


def _reference(value: torch.Tensor) -> torch.Tensor:
    """The half-precision reference of an averaged tensor: as stored if 16-bit, else bfloat16."""
    return value if value.dtype in (torch.float16, torch.bfloat16) else value.to(torch.bfloat16)


class _Pass:
    """The outputs of one pass: per averaged tensor a reference ``r`` and one float32
    accumulator of ``sum_i c_i (theta_i - r)`` per output, the weight total ``sum_i c_i`` per
    output, and the copied entries (buffers, non-float tensors) per output."""

    def __init__(self, n_out: int, buffers: frozenset[str]) -> None:
        self.buffers = buffers
        self.reference: dict[str, torch.Tensor] = {}
        self.sums: dict[str, list[torch.Tensor | None]] = {}
        self.totals = [0.0] * n_out
        self.copies: list[dict[str, torch.Tensor]] = [{} for _ in range(n_out)]

    def add(self, state: dict[str, torch.Tensor], weights: Sequence[float]) -> None:
        """Add ``weights[k] * state`` to output ``k``; copy buffers and non-float tensors into the
        outputs with a non-zero weight that have none yet (snapshots come latest first)."""
        for k, c in enumerate(weights):
            self.totals[k] += c
        for key, value in state.items():
            if value.is_floating_point() and key not in self.buffers:
                if key not in self.reference:
                    self.reference[key] = _reference(value)
                    self.sums[key] = [torch.zeros(value.shape, dtype=torch.float32) for _ in weights]
                delta = value.to(torch.float32, copy=True).sub_(self.reference[key])
                for acc, c in zip(self.sums[key], weights, strict=True):
                    if c != 0.0:
                        acc.add_(delta, alpha=c)  # type: ignore[union-attr]
                del delta
            else:
                for k, c in enumerate(weights):
                    if c != 0.0 and key not in self.copies[k]:
                        floating = value.is_floating_point()
                        self.copies[k][key] = value.to(torch.float32, copy=True) if floating else value.clone()

    def finish(self) -> None:
        """Add ``(sum_i c_i) r`` into every accumulator, then drop the references."""
        for key, accs in self.sums.items():
            for acc, total in zip(accs, self.totals, strict=True):
                acc.add_(self.reference[key], alpha=total)  # type: ignore[union-attr]
        self.reference = {}

    def take(self, k: int, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """Output ``k`` (after ``finish``), released from the pass."""
        out = {}
        for key in keys:
            if key in self.sums:
                out[key] = self.sums[key][k]
                self.sums[key][k] = None
            else:
                out[key] = self.copies[k][key]
        self.copies[k] = {}
        return out  # type: ignore[return-value]


def stream_reconstruct(
    snapshots: Sequence[Snapshot],
    coefs: np.ndarray,
    buffers: frozenset[str],
    batch: int,
    progress: bool = True,
    load: Callable[[Snapshot], dict[str, torch.Tensor]] | None = None,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(j, state_dict)`` with ``state_dict = sum_i coefs[i, j] snapshot_i`` (float32).

    Outputs are built ``batch`` at a time. Each pass reads every snapshot with a non-zero
    coefficient for any output once, one file at a time (``load``, default: a model file),
    latest first, so the first pass has read and checked every file before anything is
    yielded. Memory: ``batch`` float32 outputs, a half-precision reference and one snapshot,
    whatever the number of snapshots. Since ``sum_i c_i theta_i = (sum_i c_i) r + sum_i c_i
    (theta_i - r)`` for any ``r``, the accumulators sum the differences from the latest
    snapshot ``r`` (as stored if 16-bit, else rounded to bfloat16), which are small where the
    coefficients are large: float32 accumulation then stays far within 1e-5 relative of the
    float64 sum. Buffers and non-float tensors come from the latest snapshot with a non-zero
    coefficient.
    """
    n_out = coefs.shape[1]
    passes = math.ceil(n_out / batch)
    rows = [i for i in range(len(snapshots)) if np.any(coefs[i] != 0)][::-1]
    for p in range(passes):
        cols = list(range(p * batch, min((p + 1) * batch, n_out)))
        state_pass = _Pass(len(cols), buffers)
        layout: dict[str, tuple[torch.Size, torch.dtype]] | None = None
        bar = tqdm(rows, desc=f"pass {p + 1}/{passes}", unit="snapshot", disable=not progress)
        for i in bar:
            state = (load or read_snapshot)(snapshots[i])  # native: checked against the index's SHA-256
            found = {k: (v.shape, v.dtype) for k, v in state.items()}
            if layout is None:
                layout = found
            elif found != layout:
                raise ValueError(
                    f"{snapshots[i].path}: tensor names, shapes or dtypes differ from {snapshots[rows[0]].path}"
                )
            state_pass.add(state, [float(c) for c in coefs[i, cols]])
            del state
        assert layout is not None
        state_pass.finish()
        for k, j in enumerate(cols):
            yield j, state_pass.take(k, layout)


@dataclass(frozen=True)
class Solution:
    """How the EMAs ``stds`` at ``nimg`` are rebuilt: the snapshots used, their coefficients
    ``[len(used), len(stds)]`` and each profile's relative error."""

    nimg: int
    stds: tuple[float, ...]
    used: tuple[Snapshot, ...]
    coefs: np.ndarray
    errors: np.ndarray

    @property
    def in_nimg(self) -> np.ndarray:
        return np.array([s.nimg for s in self.used], dtype=np.float64)

    @property
    def in_std(self) -> np.ndarray:
        return np.array([s.std for s in self.used], dtype=np.float64)


def snapshot_folder(run: str | os.PathLike) -> Path:
    """``<run>/phema`` of a run folder, or ``run`` itself if it holds the snapshot index."""
    run = Path(run).expanduser()
    for folder in (run / "phema", run):
        if (folder / INDEX_NAME).is_file():
            return folder
    raise FileNotFoundError(
        f"{run}: no post-hoc EMA snapshots ({run / 'phema' / INDEX_NAME} does not exist, "
        "and no EDM2 raw snapshots <prefix>-<kimg:07d>-<std:.3f>.pkl are in it)"
    )


class NativeSnapshots:
    """The snapshot folders (``phema/``) of one autoguide run."""

    kind = "snapshots"

    def __init__(self, folders: Sequence[str | os.PathLike]) -> None:
        self.folders = [snapshot_folder(f) for f in folders]
        found = collect_snapshots(self.folders)
        self.network, self.buffers, self.snapshots = found.network, found.buffers, found.snapshots
        self.latent = read_run_latent(self.run_dir)

    @property
    def run_dir(self) -> Path:
        """The run folder: the parent of the (first) snapshot folder."""
        return self.folders[0].resolve().parent

    def check(self, used: Sequence[Snapshot]) -> None:
        check_snapshot_files(used, self.network)

    def read(self, snap: Snapshot) -> dict[str, torch.Tensor]:
        return read_snapshot(snap)

    def inputs(self, used: Sequence[Snapshot]) -> list[dict[str, Any]] | None:
        return None


def snapshot_source(folders: Sequence[str | os.PathLike]) -> NativeSnapshots | EDM2RawSnapshots:
    """The snapshots of ``folders``: autoguide snapshot folders (an ``index.json`` in the folder
    or its ``phema/``) or folders of EDM2 raw snapshots, not a mix."""

    def native(folder: str | os.PathLike) -> bool:
        return any((Path(folder) / d / INDEX_NAME).is_file() for d in ("", "phema"))

    raw = [is_raw_snapshot_folder(f) and not native(f) for f in folders]
    if all(raw):
        return EDM2RawSnapshots(folders)
    if any(raw):
        mixed = next(f for f, r in zip(folders, raw, strict=True) if r)
        raise ValueError(f"{mixed}: EDM2 raw snapshots cannot be mixed with autoguide snapshot folders")
    return NativeSnapshots(folders)


def ema_filename(nimg: int, std: float) -> str:
    """``ema-{nimg:012d}-{std:.4f}.safetensors``."""
    return f"ema-{int(nimg):012d}-{float(std):.4f}.safetensors"


class PosthocEMA:
    """Every EMA the snapshots of one run can rebuild; ``folders`` are snapshot folders (or run
    folders holding ``phema/``), several for a run whose snapshots were split, or folders of
    EDM2 raw snapshots (``ema.edm2_snapshots``)."""

    def __init__(self, folders: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        self.source = snapshot_source(folders)
        self.folders = self.source.folders
        self.found = SnapshotSet(self.source.network, self.source.buffers, self.source.snapshots)
        self.latent = self.source.latent

    @property
    def network(self) -> dict[str, Any]:
        return self.found.network

    def nimg(self, time: EmaTime = None) -> int:
        """The snapshot time that ``time`` means for this run."""
        return resolve_target_nimg(self.found.snapshots, time)

    def solve(self, stds: Sequence[float], time: EmaTime = None, max_error: float = DEFAULT_MAX_ERROR) -> Solution:
        """Coefficients and profile errors of the EMAs ``stds`` at ``time``; refuses (naming
        the stds, the time and what is representable there) a profile error above ``max_error``
        and missing, truncated or mismatched snapshot files."""
        target = self.nimg(time)
        used = tuple(s for s in self.found.snapshots if 0 < s.nimg <= target)
        self.source.check(used)
        in_nimg = np.array([s.nimg for s in used], dtype=np.float64)
        in_std = np.array([s.std for s in used], dtype=np.float64)
        out_std = np.array(stds, dtype=np.float64)
        out_nimg = np.full(len(out_std), float(target))
        coefs = solve_coefficients(in_nimg, in_std, out_nimg, out_std)
        errors = profile_error(in_nimg, in_std, out_nimg, out_std, coefs)
        bad = [f"{s:g} (error {e:.3g})" for s, e in zip(out_std, errors, strict=True) if e > max_error]
        if bad:
            spans = representable_ranges(in_nimg, in_std, target, max_error)
            shown = ", ".join(f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}" for lo, hi in spans)
            hint = f"the representable stds there are about {shown}" if spans else "no std is representable there"
            times = sorted({s.nimg for s in self.found.snapshots})
            if target not in times:
                after = [t for t in times if t > target][:1]
                nearest = ", ".join(str(t) for t in [int(in_nimg.max()), *after])
                hint += f"; nimg {target} is not a snapshot time (nearest: {nearest})"
            raise ValueError(
                f"cannot represent EMA std {', '.join(bad)} at nimg {target} with the stored stds "
                f"{sorted(set(in_std.tolist()))} ({len(used)} snapshots up to nimg {int(in_nimg.max())}): the relative "
                f"profile error exceeds the maximum {max_error:g}; {hint}"
            )
        return Solution(target, tuple(float(s) for s in stds), used, coefs, errors)

    def card(self, solution: Solution, j: int) -> dict[str, Any]:
        """The model card of output ``j`` of ``solution`` (raw EDM2 snapshots: with ``inputs``,
        every file used and its SHA-256)."""
        inputs = self.source.inputs(solution.used)
        return {
            "network": self.found.network,
            "nimg": solution.nimg,
            "ema_std": solution.stds[j],
            "source": (
                f"post-hoc EMA reconstruction from {len(solution.used)} {self.source.kind} in "
                f"{', '.join(str(f) for f in self.folders)} (profile error {solution.errors[j]:.2e})"
            ),
            **({"latent": self.latent} if self.latent is not None else {}),
            **({"inputs": inputs} if inputs is not None else {}),
        }

    def models(
        self,
        stds: Sequence[float],
        time: EmaTime = None,
        max_error: float = DEFAULT_MAX_ERROR,
        batch: int = 8,
        progress: bool = False,
    ) -> Iterator[tuple[float, dict[str, torch.Tensor], dict[str, Any]]]:
        """``(std, state_dict, card)`` of every EMA ``stds`` at ``time``, rebuilt in memory."""
        solution = self.solve(stds, time, max_error)
        for j, state in self._stream(solution, batch, progress):
            yield solution.stds[j], state, self.card(solution, j)

    def write(
        self,
        stds: Sequence[float],
        time: EmaTime = None,
        out_dir: OutDirs = None,
        max_error: float = DEFAULT_MAX_ERROR,
        batch: int = 8,
        progress: bool = False,
    ) -> list[Path]:
        """Model files of the EMAs ``stds`` at ``time`` in ``out_dir`` (default
        ``<run>/reconstructed``; a list: one folder per std), in the order of ``stds``."""
        return list(self.write_solution(self.solve(stds, time, max_error), out_dir, batch, progress))

    def write_solution(
        self, solution: Solution, out_dir: OutDirs = None, batch: int = 8, progress: bool = False
    ) -> Iterator[Path]:
        """Write the EMAs of ``solution`` (``solve``) as model files into ``out_dir`` (one
        folder, or a list of one per std), each folder claimed first in sorted order
        (``autoguide.runtime.claim``), yielding each path once written."""
        if out_dir is None or isinstance(out_dir, str | os.PathLike):
            outs = [Path(out_dir) if out_dir is not None else self.default_dir] * len(solution.stds)
        else:
            outs = [Path(folder) for folder in out_dir]
            if len(outs) != len(solution.stds):
                raise ValueError(f"{len(outs)} output folders for {len(solution.stds)} EMA stds; give one per std")
        with ExitStack() as claims:
            for folder in sorted(set(outs)):
                claims.enter_context(claim_folder(folder))
            for j, state in self._stream(solution, batch, progress):
                path = outs[j] / ema_filename(solution.nimg, solution.stds[j])
                save_model(path, state, self.card(solution, j))
                yield path

    def _stream(self, solution: Solution, batch: int, progress: bool) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        return stream_reconstruct(solution.used, solution.coefs, self.found.buffers, batch, progress, self.source.read)

    @property
    def default_dir(self) -> Path:
        """``<run>/reconstructed``: beside the (first) snapshot folder of a run, inside a folder
        of raw EDM2 snapshots."""
        return self.source.run_dir / RECONSTRUCTED_DIR


def reconstruct(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    stds: Sequence[float],
    time: EmaTime = None,
    out_dir: str | os.PathLike | None = None,
    max_error: float = DEFAULT_MAX_ERROR,
    batch: int = 8,
    progress: bool = False,
) -> list[Path]:
    """``PosthocEMA(folders).write(stds, time, out_dir, ...)``: model files of the EMAs ``stds``."""
    return PosthocEMA(folders).write(stds, time, out_dir, max_error, batch, progress)
