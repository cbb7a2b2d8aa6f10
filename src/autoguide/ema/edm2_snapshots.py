"""EDM2's raw post-hoc EMA snapshots as a snapshot source of ``PosthocEMA``.

EDM2's training loop (and NVIDIA's released ``raw-snapshots/`` folders) store, at every snapshot
time, one pickle per tracked EMA std: ``<prefix>-<kimg:07d>-<std:.3f>.pkl`` (``network-snapshot``
in a training run), each the dict ``ema`` (the fp16 ``Precond`` network), ``encoder``,
``dataset_kwargs``, ``loss_fn``. The name holds ``kimg = nimg // 1000``; EDM2 trains in batches of
multiples of 1024 images, so the time is the multiple of 1024 whose ``// 1000`` is ``kimg``
(``io.edm2_import.release_nimg_and_std``), not ``1000 kimg``.

Every file is read by the restricted unpickler of ``io.edm2_import`` (nothing in it runs), one at
a time, its fp16 weights kept as stored. Refused, naming the file, before any output is written:
names with two prefixes, a time listed twice (the same name in two folders), a time whose set
of stds differs from the others (a partial copy), a name that is no EDM2 time, a file that does
not end like a pickle (truncated), and, while the first pass reads every file, a pickle that is
not an EDM2 network or whose network differs from the first file's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from autoguide.ema.snapshots import Snapshot
from autoguide.io.digest import file_sha256
from autoguide.io.edm2_import import EDM2ImportError, read_edm2_network, release_nimg_and_std

RAW_SNAPSHOT_NAME = re.compile(r"(?P<prefix>.+)-(?P<kimg>\d{7})-(?P<std>\d\.\d{3})\.pkl")
PICKLE_STOP = b"."  # the last opcode of every pickle


def raw_snapshot_files(folder: Path) -> list[Path]:
    """The files of ``folder`` named like EDM2 raw snapshots (not recursive)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and RAW_SNAPSHOT_NAME.fullmatch(p.name))


def _snapshot_of(path: Path) -> Snapshot:
    nimg, std = release_nimg_and_std(path.name)
    if nimg is None or std is None:
        kimg = RAW_SNAPSHOT_NAME.fullmatch(path.name)["kimg"]  # type: ignore[index]
        raise ValueError(
            f"{path}: kimg {kimg} is no EDM2 snapshot time (no multiple of 1024 images has nimg // 1000 = {int(kimg)})"
        )
    return Snapshot(path, nimg, std)


def scan_raw_snapshots(folders: Sequence[Path]) -> tuple[Snapshot, ...]:
    """Snapshots of the raw files in ``folders`` sorted by (nimg, std), with the name checks of
    the module docstring."""
    files = [p for f in folders for p in raw_snapshot_files(f)]
    if not files:
        where = ", ".join(map(str, folders))
        raise FileNotFoundError(f"no EDM2 raw snapshots (<prefix>-<kimg:07d>-<std:.3f>.pkl) in {where}")
    prefixes: dict[str, Path] = {}
    for path in files:
        prefixes.setdefault(RAW_SNAPSHOT_NAME.fullmatch(path.name)["prefix"], path)  # type: ignore[index]
    if len(prefixes) > 1:
        a, b = list(prefixes.values())[:2]
        raise ValueError(f"{b}: name prefix differs from {a}; a folder of raw snapshots holds one training run")
    seen: dict[tuple[int, float], Path] = {}
    for snap in map(_snapshot_of, files):
        key = (snap.nimg, snap.std)
        if key in seen:
            raise ValueError(
                f"raw snapshot nimg={snap.nimg} std={snap.std:g} appears twice: {seen[key]} and {snap.path}"
            )
        seen[key] = snap.path
    snapshots = tuple(Snapshot(path, nimg, std) for (nimg, std), path in sorted(seen.items()))
    stds = sorted({s.std for s in snapshots})
    for nimg in sorted({s.nimg for s in snapshots}):
        here = [s for s in snapshots if s.nimg == nimg]
        if [s.std for s in here] != stds:
            missing = sorted(set(stds) - {s.std for s in here})
            raise ValueError(
                f"{here[0].path}: snapshot time nimg={nimg} has stds {[s.std for s in here]} "
                f"but the folder tracks {stds} "
                f"(std {', '.join(f'{m:.3f}' for m in missing)} missing: an incomplete copy?)"
            )
    return snapshots


def check_raw_files(snapshots: Iterable[Snapshot]) -> None:
    """Cheap check of every file before any is read: present, and ending in the pickle STOP
    opcode (a truncated copy does not). The full check is the read itself (``read``)."""
    for snap in snapshots:
        try:
            with open(snap.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                last = f.read(1)
        except OSError as err:
            reason = err.strerror or err
            raise ValueError(f"{snap.path}: cannot read the raw snapshot ({reason}; empty or missing?)") from err
        if last != PICKLE_STOP:
            raise ValueError(f"{snap.path}: does not end like a pickle: truncated or not an EDM2 raw snapshot")


class EDM2RawSnapshots:
    """The raw snapshots of one EDM2 training run, split over one or more folders.

    The network config, buffers and latent space come from the latest file (read once here);
    ``read(snapshot)`` gives a file's weights in fp16, checked against that network, and
    remembers the file's SHA-256 for the cards (``inputs``).
    """

    kind = "EDM2 raw snapshots"

    def __init__(self, folders: Sequence[str | os.PathLike]) -> None:
        self.folders = [Path(f).expanduser() for f in folders]
        self.snapshots = scan_raw_snapshots(self.folders)
        latest = self.snapshots[-1]
        check_raw_files([latest])
        network = self._read_network(latest.path)
        self.network = network.config
        self.latent = network.latent
        self.buffers = frozenset(_buffer_names(network.config))
        self._sha256: dict[Path, str] = {}

    @property
    def run_dir(self) -> Path:
        """The run's folder: the (first) folder of raw snapshots."""
        return self.folders[0].resolve()

    def check(self, used: Sequence[Snapshot]) -> None:
        check_raw_files(used)

    @staticmethod
    def _read_network(path: Path):
        try:
            return read_edm2_network(path, dtype=None)
        except EDM2ImportError as err:
            raise ValueError(f"not an EDM2 raw snapshot: {err}") from err

    def read(self, snap: Snapshot) -> dict[str, torch.Tensor]:
        """The fp16 weights of ``snap``; refuses a file whose network differs from the run's."""
        network = self._read_network(snap.path)
        if network.config != self.network:
            raise ValueError(
                f"{snap.path}: network architecture differs from {self.snapshots[-1].path}; "
                "snapshots of different architectures cannot be mixed"
            )
        self._sha256[snap.path] = file_sha256(snap.path)
        return network.state

    def inputs(self, used: Sequence[Snapshot]) -> list[dict[str, Any]]:
        """The card's ``inputs``: every file used, with its time, std and SHA-256."""
        return [
            {
                "file": str(s.path.resolve()),
                "nimg": s.nimg,
                "std": s.std,
                "sha256": self._sha256.get(s.path) or file_sha256(s.path),
            }
            for s in used
        ]


def _buffer_names(network: dict[str, Any]) -> list[str]:
    from autoguide.nets import build_network

    with torch.device("meta"):
        return [k for k, _ in build_network(network).named_buffers()]


def is_raw_snapshot_folder(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds files named like EDM2 raw snapshots."""
    return bool(raw_snapshot_files(Path(folder).expanduser()))
