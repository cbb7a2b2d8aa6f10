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

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoguide.io import write_text_atomic
from autoguide.io.digest import file_sha256
from autoguide.io.records import SpecConflict, bind_spec_file, canonical, fingerprint, read_json, spec_digest, unchanged
from autoguide.runtime.claim import claim_folder

log = logging.getLogger(__name__)

SPEC_NAME = "spec.json"
RECORD_NAME = "stage.json"
RECORD_FORMAT = "autoguide-sims-stage/1"

__all__ = [
    "SpecConflict",
    "bind_spec",
    "canonical",
    "clear_record",
    "complete_record",
    "file_sha256",
    "fingerprint",
    "run_stage",
    "spec_digest",
    "unchanged",
    "write_record",
]


def bind_spec(folder: Path, stage: str, spec: Mapping[str, Any]) -> None:
    """Create ``folder`` and bind it to ``spec``; ``SpecConflict`` if it holds another spec."""
    folder.mkdir(parents=True, exist_ok=True)
    bind_spec_file(
        folder / SPEC_NAME, spec, f"this {stage} stage", f"Use a new out_dir, or delete {folder} to redo the stage"
    )


def complete_record(folder: Path, stage: str, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stage record if the stage in ``folder`` is complete for ``spec``, else ``None``.

    Raises ``SpecConflict`` if the folder is bound to a different spec. A record whose outputs
    are missing or changed is reported and ignored (the stage is redone).
    """
    if not (folder / SPEC_NAME).exists():
        return None
    bind_spec(folder, stage, spec)
    record = read_json(folder / RECORD_NAME)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    if record.get("stage") != stage or record.get("spec") != canonical(spec):
        return None
    for name, recorded in record.get("outputs", {}).items():
        if not isinstance(recorded, dict) or not unchanged(folder / name, recorded):
            log.warning("%s: output %s is missing or changed; redoing the %s stage", folder, name, stage)
            return None
    return record


def write_record(
    folder: Path, stage: str, spec: Mapping[str, Any], outputs: Sequence[Path], info: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``stage.json`` for outputs (files inside ``folder``) and return it."""
    prints = {Path(path).resolve().relative_to(folder.resolve()).as_posix(): fingerprint(path) for path in outputs}
    record = {
        "format": RECORD_FORMAT,
        "stage": stage,
        "spec": canonical(spec),
        "outputs": prints,
        "info": canonical(info),
    }
    write_text_atomic(folder / RECORD_NAME, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def clear_record(folder: Path) -> None:
    """Remove a (stale) record before a stage is redone."""
    (folder / RECORD_NAME).unlink(missing_ok=True)


StageWork = Callable[[], "tuple[Sequence[Path], Mapping[str, Any]] | None"]


def run_stage(
    folder: Path, stage: str, spec: Mapping[str, Any], work: StageWork, role: str | None = None
) -> dict[str, Any] | None:
    """Claim the stage folder (``autoguide.runtime.claim``; ``role`` names one of several processes
    that split a stage, e.g. an array task), then skip the stage if ``folder`` holds a complete
    record for ``spec``; else bind the folder, drop any stale record, run ``work`` and record
    its ``(outputs, info)``. ``work`` returns ``None`` when it did only part of the stage (e.g.
    one array task): no record then."""
    with claim_folder(folder, role):
        return _run_claimed_stage(folder, stage, spec, work)


def run_whole_stage(folder: Path, stage: str, spec: Mapping[str, Any], work: StageWork) -> dict[str, Any]:
    """``run_stage`` for a stage that one process does whole (its ``work`` never returns
    ``None``): the record."""
    record = run_stage(folder, stage, spec, work)
    if record is None:
        raise RuntimeError(f"{stage}: the stage in {folder} ended without a record")
    return record


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
