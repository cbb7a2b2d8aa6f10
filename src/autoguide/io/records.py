"""Records that tie outputs to the inputs that made them: file fingerprints, canonical specs
and their digests, and a folder's binding to one spec (``spec.json``-style files).

Used by every resumable writer (the SIMS stages, the latent encoder): a piece of work is done
iff its record matches the requested inputs and its outputs are unchanged; a folder started
with other inputs is refused (``SpecConflict``) instead of silently mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoguide.io.atomic import write_text_atomic
from autoguide.io.digest import file_sha256


class SpecConflict(ValueError):
    """A folder already belongs to a run with other inputs."""


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256", "size", "mtime_ns"}`` of a file."""
    stat = os.stat(path)
    return {"sha256": file_sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def unchanged(path: str | os.PathLike, recorded: Mapping[str, Any]) -> bool:
    """Whether the file still matches its ``fingerprint``: same size, and the same
    modification time or else the same SHA-256."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if stat.st_size != recorded.get("size"):
        return False
    return stat.st_mtime_ns == recorded.get("mtime_ns") or file_sha256(path) == recorded.get("sha256")


def canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists, keys -> str), for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True))


def spec_digest(spec: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of ``spec`` (identifies one set of inputs)."""
    return hashlib.sha256(json.dumps(canonical(spec), sort_keys=True).encode()).hexdigest()[:16]


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two canonical specs differ, each as ``key (old -> new)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def load_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON value in ``path``; ``ValueError`` ``"{path}: cannot read the {what}: ..."``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the {what}: {error}") from error


def bind_spec_file(
    path: str | os.PathLike, spec: Mapping[str, Any], what: str, remedy: str, write: bool = True
) -> None:
    """Bind ``path`` to ``spec``: write the canonical JSON when the file is missing or
    unreadable (``write=False``: only check, write nothing); ``SpecConflict`` naming the changed
    keys when it holds another spec (``"{path}: {what} was started with other inputs; changed:
    ...; {remedy}"``)."""
    path = Path(path)
    wanted = canonical(spec)
    found = read_json(path) if path.exists() else None
    if found is None:
        if write:
            write_text_atomic(path, json.dumps(wanted, indent=1, sort_keys=True) + "\n")
        return
    if found != wanted:
        changed = differences(found, wanted)
        raise SpecConflict(f"{path}: {what} was started with other inputs; changed: {'; '.join(changed[:8])}. {remedy}")
