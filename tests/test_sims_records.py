"""SIMS stage records: a stage is complete only with a record whose spec and hashes match."""

import hashlib
import json
import os

import pytest

from autoguide.sims.records import SpecConflict, bind_spec, clear_record, complete_record, file_sha256, write_record


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 40000  # more than one read block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_record_round_trip_and_invalidation(tmp_path):
    spec = {"a": 1, "b": [1, 2], "c": {"d": 0.5}}
    out = tmp_path / "out.txt"
    assert complete_record(tmp_path, "stage", spec) is None  # nothing started
    bind_spec(tmp_path, "stage", spec)
    assert complete_record(tmp_path, "stage", spec) is None  # started, no record: incomplete
    out.write_text("result")
    write_record(tmp_path, "stage", spec, [out], {"count": 3})
    record = complete_record(tmp_path, "stage", {"c": {"d": 0.5}, "b": (1, 2), "a": 1})  # same spec, other spelling
    assert record["outputs"]["out.txt"]["sha256"] == hashlib.sha256(b"result").hexdigest()
    assert record["outputs"]["out.txt"]["size"] == 6
    assert record["info"] == {"count": 3}
    assert complete_record(tmp_path, "other-stage", spec) is None
    out.write_text("RESULT")
    os.utime(out, ns=(1, 1))
    assert complete_record(tmp_path, "stage", spec) is None  # changed output (same size, other time): redo
    out.write_text("changed")
    assert complete_record(tmp_path, "stage", spec) is None  # other size: redo
    out.unlink()
    assert complete_record(tmp_path, "stage", spec) is None  # missing output: redo
    out.write_text("result")
    assert complete_record(tmp_path, "stage", spec) is not None  # rewritten with the same bytes: re-hashed, fine
    clear_record(tmp_path)
    assert complete_record(tmp_path, "stage", spec) is None
    (tmp_path / "stage.json").write_text("{ truncated")
    assert complete_record(tmp_path, "stage", spec) is None


def test_folder_is_bound_to_one_spec(tmp_path):
    bind_spec(tmp_path, "synthesize", {"num_images": 10, "sampler": {"num_steps": 32}})
    bind_spec(tmp_path, "synthesize", {"num_images": 10, "sampler": {"num_steps": 32}})
    with pytest.raises(SpecConflict, match=r"sampler\.num_steps \(32 -> 16\)"):
        bind_spec(tmp_path, "synthesize", {"num_images": 10, "sampler": {"num_steps": 16}})
    with pytest.raises(SpecConflict, match="num_images"):
        complete_record(tmp_path, "synthesize", {"num_images": 11, "sampler": {"num_steps": 32}})
    assert json.loads((tmp_path / "spec.json").read_text())["num_images"] == 10
