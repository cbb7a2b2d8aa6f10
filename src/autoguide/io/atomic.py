"""Atomic file writes: write to a temporary name in the same folder, then rename (text, JSON,
CSV, or anything a writer puts at the temporary path)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Readers never see a half-written file: either the old file or the complete new one.
    On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(value: Any) -> str:
    """Strict, indented JSON of ``value``: non-finite floats (``sampler.S_max = inf``) become
    strings, other non-JSON values their ``str``."""

    def ready(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, Mapping):
            return {k: ready(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [ready(x) for x in v]
        return v

    return json.dumps(ready(value), indent=2, default=str, allow_nan=False) + "\n"


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write ``json_text(value)`` to ``path`` atomically."""
    write_text_atomic(path, json_text(value))


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    """Write ``rows`` as CSV with the columns ``fieldnames`` (other keys ignored) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
