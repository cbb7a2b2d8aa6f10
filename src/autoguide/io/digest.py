"""Content hashes of files (SHA-256), used to tie records to the exact bytes they describe."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 22


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB blocks). Remembered per (path, size,
    modification time), so a large file read again unchanged is not hashed again."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return read_sha256(path)


def read_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read now (no memory of earlier reads)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()
