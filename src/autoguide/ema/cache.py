"""The one cache of post-hoc EMA reconstructions (docs/design.md, "Guidance search"): the
guidance search's shared, size-capped cache and a sweep's ``<run>/reconstructed``.

An entry is one model file ``<cache>/<key>/ema-{nimg}-{std}.safetensors``, written by
``PosthocEMA.write`` (atomically, under the claim of the entry folder), where ``key`` is the
digest of what the reconstruction depends on: the snapshots it sums (resolved path, nimg, std,
size and modification time of each), the target nimg and std, and the code of the solver (the
source of ``autoguide.ema.power`` and ``autoguide.ema.posthoc``). Any number of processes (the
workers of one search, the jobs of a sweep, on one machine or on a shared file system) use one
cache folder: a present entry is a hit and is never rebuilt; the missing entries of one request
are built in one pass over the snapshots by the process that claims their folders (in sorted
order, so two processes never wait for each other) while the others wait for it and then hit.
Each hit refreshes the modification time of the entry's ``last-use`` file (the model file stays
untouched); when the entries exceed ``max_bytes``, the
least recently used ones (not those just used, nor one being written) are deleted, under the
claim ``evict`` of the cache folder, so at most one process evicts at a time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from autoguide.ema import posthoc, power
from autoguide.ema.posthoc import DEFAULT_MAX_ERROR, EmaTime, PosthocEMA, ema_filename
from autoguide.io.records import spec_digest
from autoguide.runtime.claim import claim_folder, lease_path

log = logging.getLogger(__name__)

LAST_USE = "last-use"
"""An entry's empty file whose modification time is its last use (a hit leaves the model file as it was)."""

WAIT_S = 1800.0
"""How long a process waits for another one building the entries it needs."""


@functools.cache
def solver_code() -> str:
    """SHA-256 of the source of the reconstruction (``ema.power`` and ``ema.posthoc``)."""
    digest = hashlib.sha256()
    for module in (power, posthoc):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


class ReconstructionCache:
    """Post-hoc EMAs by (run snapshots, time, std, solver code) in ``folder``, at most
    ``max_bytes`` in all (``None``: no cap). ``hits`` and ``builds`` count this object's uses
    (one per EMA)."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int | None = None, wait_s: float = WAIT_S) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self.hits = 0
        self.builds = 0

    def key(self, ema: PosthocEMA, std: float, time_: EmaTime, max_error: float = DEFAULT_MAX_ERROR) -> tuple[str, int]:
        """``(key, nimg)`` of the EMA ``std`` at ``time_`` of ``ema``'s run (refuses, like
        ``PosthocEMA.solve``, a std the snapshots cannot represent there)."""
        solution = ema.solve([std], time_, max_error)
        used = []
        for snap in solution.used:
            stat = snap.path.stat()
            used.append([str(snap.path.resolve()), snap.nimg, snap.std, stat.st_size, stat.st_mtime_ns])
        spec = {"snapshots": used, "nimg": solution.nimg, "std": round(float(std), 9), "solver": solver_code()}
        return spec_digest(spec), solution.nimg

    def get(
        self, ema: PosthocEMA, std: float, time_: EmaTime = None, max_error: float = DEFAULT_MAX_ERROR, batch: int = 8
    ) -> Path:
        """The model file of the EMA ``std`` at ``time_`` of ``ema``'s run: the cached one, or
        built once into the cache (another process building it is waited for)."""
        return self.files(ema, [std], time_, max_error, batch)[1][std]

    def files(
        self,
        ema: PosthocEMA,
        stds: Sequence[float],
        time_: EmaTime = None,
        max_error: float = DEFAULT_MAX_ERROR,
        batch: int = 8,
    ) -> tuple[int, dict[float, Path]]:
        """``(nimg, {std: model file})`` of the EMAs ``stds`` at ``time_`` of ``ema``'s run,
        the missing ones built first in one pass over the snapshots."""
        keys = {std: self.key(ema, std, time_, max_error) for std in stds}
        nimg = ema.nimg(time_)
        paths = {std: self.folder / key / ema_filename(nimg, std) for std, (key, _) in keys.items()}
        built: list[float] = []
        if any(not path.is_file() for path in paths.values()):
            with ExitStack() as claims:
                for entry in sorted({path.parent for path in paths.values() if not path.is_file()}):
                    claims.enter_context(claim_folder(entry, wait_s=self.wait_s))
                built = [std for std, path in paths.items() if not path.is_file()]
                if built:
                    log.info("reconstructing EMA %s at nimg %d of %s into %s", built, nimg, ema.folders, self.folder)
                    ema.write(
                        built, nimg, out_dir=[paths[std].parent for std in built], max_error=max_error, batch=batch
                    )
            self.evict(keep={path.parent for path in paths.values()})
        for std, path in paths.items():
            if std not in built:
                (path.parent / LAST_USE).touch()  # for the least-recently-used eviction
        self.builds += len(built)
        self.hits += len(paths) - len(built)
        return nimg, paths

    def entries(self) -> list[tuple[Path, int, float]]:
        """``(entry folder, bytes, last use)`` of every complete entry; the last use is the
        latest modification time of its model file and of its ``last-use`` file."""
        found = []
        for entry in self.folder.iterdir() if self.folder.is_dir() else []:
            files = list(entry.glob("*.safetensors")) if entry.is_dir() else []
            if files:
                stamps = [f.stat().st_mtime for f in [*files, entry / LAST_USE] if f.exists()]
                found.append((entry, sum(f.stat().st_size for f in files), max(stamps)))
        return found

    def evict(self, keep: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
        """Delete least recently used entries until the cache holds at most ``max_bytes``;
        never the entry folders ``keep`` nor an entry being written. Returns the deleted folders."""
        if self.max_bytes is None:
            return []
        deleted = []
        with claim_folder(self.folder, role="evict", wait_s=self.wait_s):
            entries = sorted(self.entries(), key=lambda e: e[2])
            total = sum(size for _, size, _ in entries)
            for entry, size, _ in entries:
                if total <= self.max_bytes:
                    break
                if entry in keep or lease_path(entry).exists():
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                deleted.append(entry)
                total -= size
        if deleted:
            log.info("reconstruction cache %s: evicted %d entries", self.folder, len(deleted))
        return deleted
