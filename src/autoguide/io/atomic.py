"""Atomic file writes: write to a temporary name in the same folder, then rename (text, JSON,
CSV, or anything a writer puts at the temporary path).

Every write asks the registered write guards first (``add_write_guard``): ``autoguide.runtime.claim``
registers one that stops a process whose claim on the folder was taken over, before the write
starts and again before the rename publishes it. A write that fails because the disk is full
raises ``DiskFullError``, one line naming the file, whatever library did the writing.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_WRITE_GUARDS: list[Callable[[Path], None]] = []


class DiskFullError(OSError):
    """A write failed for lack of space (or quota); the message names the file."""


def add_write_guard(guard: Callable[[Path], None]) -> None:
    """Call ``guard(target)`` before every atomic write and before its rename; a guard stops a
    write by raising or exiting."""
    if guard not in _WRITE_GUARDS:
        _WRITE_GUARDS.append(guard)


def _check_guards(path: Path) -> None:
    for guard in _WRITE_GUARDS:
        guard(path)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a lack of space: ``ENOSPC`` or
    ``EDQUOT``, also when a library re-raised it as text (safetensors: "No space left on
    device (os error 28)")."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(code) in str(current) for code in DISK_FULL_ERRNOS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(path: Path) -> DiskFullError:
    """The one-line error for a write of ``path`` that ran out of space."""
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    return DiskFullError(
        errno.ENOSPC,
        f"{path}: no space left on device ({free / 2**20:.0f} MiB free in {path.parent}); "
        f"the file was not written, free some space and rerun",
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Readers never see a half-written file: either the old file or the complete new one.
    On error the temporary file is removed and ``path`` is untouched; a full disk raises
    ``DiskFullError`` naming ``path``.
    """
    path = Path(path)
    _check_guards(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        _check_guards(path)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(error, Exception) and not isinstance(error, DiskFullError) and is_disk_full(error):
            raise disk_full_error(path) from error
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
