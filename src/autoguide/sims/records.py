"""Stage records: when is a SIMS stage complete, and for which inputs.

Every stage folder holds

- ``spec.json``: the stage's inputs (config values and the SHA-256 of the files it reads),
  written when the stage starts. A folder is bound to one spec: starting the stage again with
  different inputs is an error (``SpecConflict``) instead of silently mixing two runs.
- ``stage.json``: written last, after every output exists: the spec, the fingerprint of
  every output file (SHA-256, size, modification time) and free ``info``. The stage is
  complete iff this record exists, its spec equals the requested one and every listed output
  is unchanged: same size and either the same modification time or the same SHA-256 (so
  large outputs are re-hashed only when they were touched).

A stage killed at any moment therefore has no valid record and is redone (reusing only
pieces that carry their own verifiable record, such as finished synthetic shards or training
checkpoints). Files are written atomically (``autoguide.io``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoguide.claim import claim_folder
from autoguide.io import write_text_atomic
from autoguide.io.digest import file_sha256

log = logging.getLogger(__name__)

SPEC_NAME = "spec.json"
RECORD_NAME = "stage.json"
RECORD_FORMAT = "autoguide-sims-stage/1"


class SpecConflict(ValueError):
    """A stage folder already belongs to a run with other inputs."""


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
    """Short SHA-256 of the canonical JSON of ``spec`` (identifies one set of stage inputs)."""
    return hashlib.sha256(json.dumps(canonical(spec), sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two canonical specs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def bind_spec(folder: Path, stage: str, spec: Mapping[str, Any]) -> None:
    """Create ``folder`` and bind it to ``spec``; ``SpecConflict`` if it holds another spec."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPEC_NAME
    wanted = canonical(spec)
    found = _read_json(path) if path.exists() else None
    if found is None:
        write_text_atomic(path, json.dumps(wanted, indent=1, sort_keys=True) + "\n")
        return
    if found != wanted:
        changed = _differences(found, wanted)
        raise SpecConflict(
            f"{path}: this {stage} stage was started with other inputs; changed: "
            f"{'; '.join(changed[:8])}. Use a new out_dir, or delete {folder} to redo the stage"
        )


def complete_record(folder: Path, stage: str, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stage record if the stage in ``folder`` is complete for ``spec``, else ``None``.

    Raises ``SpecConflict`` if the folder is bound to a different spec. A record whose outputs
    are missing or changed is reported and ignored (the stage is redone).
    """
    if not (folder / SPEC_NAME).exists():
        return None
    bind_spec(folder, stage, spec)
    record = _read_json(folder / RECORD_NAME)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    if record.get("stage") != stage or record.get("spec") != canonical(spec):
        return None
    for name, recorded in record.get("outputs", {}).items():
        if not isinstance(recorded, dict) or not unchanged(folder / name, recorded):
            log.warning("%s: output %s is missing or changed; redoing the %s stage", folder, name, stage)
            return None
    return record


def write_record(folder: Path, stage: str, spec: Mapping[str, Any], outputs: Sequence[Path], info: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``stage.json`` for outputs (files inside ``folder``) and return it."""
    prints = {Path(path).resolve().relative_to(folder.resolve()).as_posix(): fingerprint(path) for path in outputs}
    record = {"format": RECORD_FORMAT, "stage": stage, "spec": canonical(spec), "outputs": prints, "info": canonical(info)}
    write_text_atomic(folder / RECORD_NAME, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def clear_record(folder: Path) -> None:
    """Remove a (stale) record before a stage is redone."""
    (folder / RECORD_NAME).unlink(missing_ok=True)


StageWork = Callable[[], "tuple[Sequence[Path], Mapping[str, Any]] | None"]


def run_stage(folder: Path, stage: str, spec: Mapping[str, Any], work: StageWork, role: str | None = None) -> dict[str, Any] | None:
    """Claim the stage folder (``autoguide.claim``; ``role`` names one of several processes
    that split a stage, e.g. an array task), then skip the stage if ``folder`` holds a complete
    record for ``spec``; else bind the folder, drop any stale record, run ``work`` and record
    its ``(outputs, info)``. ``work`` returns ``None`` when it did only part of the stage (e.g.
    one array task): no record then."""
    with claim_folder(folder, role):
        return _run_claimed_stage(folder, stage, spec, work)


def _run_claimed_stage(folder: Path, stage: str, spec: Mapping[str, Any], work: StageWork) -> dict[str, Any] | None:
    record = complete_record(folder, stage, spec)
    if record is not None:
        log.info("%s: complete in %s, skipping", stage, folder)
        return record
    bind_spec(folder, stage, spec)
    clear_record(folder)
    log.info("%s: running in %s", stage, folder)
    done = work()
    if done is None:
        return None
    outputs, info = done
    return write_record(folder, stage, spec, outputs, info)
