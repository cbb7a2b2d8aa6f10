"""A shared, size-capped cache of post-hoc EMA reconstructions (docs/design.md, "Guidance search").

An entry is one model file ``<cache>/<key>/ema-{nimg}-{std}.safetensors``, written by
``PosthocEMA.write`` (atomically, under the claim of the entry folder), where ``key`` is the
digest of what the reconstruction depends on: the snapshots it sums (resolved path, nimg, std,
size and modification time of each), the target nimg and std, and the code of the solver (the
source of ``autoguide.ema.power`` and ``autoguide.ema.posthoc``). Any number of processes (the
workers of one search, on one machine or on a shared file system) use one cache folder: a
present entry is a hit and is never rebuilt; a missing one is built by the first process that
claims its folder while the others wait for it and then hit. Each use refreshes the file's
modification time; when the entries exceed ``max_bytes``, the least recently used ones (not
the one just used, nor one being written) are deleted, under the claim ``evict`` of the cache
folder, so at most one process evicts at a time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

from autoguide.ema import posthoc, power
from autoguide.ema.posthoc import (
    CACHE_WAIT_S,
    DEFAULT_MAX_ERROR,
    EmaTime,
    PosthocEMA,
    ema_filename,
)
from autoguide.io.records import spec_digest
from autoguide.runtime.claim import claim_folder, lease_path

log = logging.getLogger(__name__)


@functools.cache
def solver_code() -> str:
    """SHA-256 of the source of the reconstruction (``ema.power`` and ``ema.posthoc``)."""
    digest = hashlib.sha256()
    for module in (power, posthoc):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


class ReconstructionCache:
    """Post-hoc EMAs by (run snapshots, time, std, solver code) in ``folder``, at most
    ``max_bytes`` in all (``None``: no cap). ``hits`` and ``builds`` count this object's uses."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int | None = None, wait_s: float = CACHE_WAIT_S) -> None:
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
        key, nimg = self.key(ema, std, time_, max_error)
        entry = self.folder / key
        path = entry / ema_filename(nimg, std)
        if not path.is_file():
            with claim_folder(entry, wait_s=self.wait_s):
                if not path.is_file():
                    log.info("reconstructing EMA %g at nimg %d of %s into %s", std, nimg, ema.folders, entry)
                    ema.write([std], nimg, out_dir=entry, max_error=max_error, batch=batch)
                    self.builds += 1
                    self.evict(keep=path)
                    return path
        self.hits += 1
        os.utime(path)  # last use, for the least-recently-used eviction
        return path

    def entries(self) -> list[tuple[Path, int, float]]:
        """``(entry folder, bytes, last use)`` of every complete entry."""
        found = []
        for entry in self.folder.iterdir() if self.folder.is_dir() else []:
            files = list(entry.glob("*.safetensors")) if entry.is_dir() else []
            if files:
                found.append((entry, sum(f.stat().st_size for f in files), max(f.stat().st_mtime for f in files)))
        return found

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used entries until the cache holds at most ``max_bytes``;
        never ``keep``'s entry nor an entry being written. Returns the deleted folders."""
        if self.max_bytes is None:
            return []
        deleted = []
        with claim_folder(self.folder, role="evict", wait_s=self.wait_s):
            entries = sorted(self.entries(), key=lambda e: e[2])
            total = sum(size for _, size, _ in entries)
            for entry, size, _ in entries:
                if total <= self.max_bytes:
                    break
                if (keep is not None and keep.parent == entry) or lease_path(entry).exists():
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                deleted.append(entry)
                total -= size
        if deleted:
            log.info("reconstruction cache %s: evicted %d entries", self.folder, len(deleted))
        return deleted
