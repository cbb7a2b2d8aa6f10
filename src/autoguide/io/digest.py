"""Content hashes of files (SHA-256), used to tie records to the exact bytes they describe."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 22


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()
