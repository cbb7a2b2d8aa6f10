"""SIMS stage 2: the synthetic training set, as WebDataset shards with a manifest.

``n`` images in total (by default the size of the real training set): ``n_real =
round(real_fraction * n)`` real images (a seeded random subset of the real data, without
replacement) and ``n_synth = n - n_real`` images sampled from the source model with the
shared sampler, image ``i`` from seed ``first_seed + i`` and the class the generation CLI's
``class_labels`` policy gives that seed (``random``: drawn from the seed). Unguided by
default; any guidance of the generation config can be given.

Images are cut into chunks of ``shard_size``; chunk ``k`` becomes ``shards/synth-{k:06d}.tar``
(or ``shards/real-{k:06d}.tar``) plus a sidecar ``chunks/<name>.json`` with its seeds or real
indices, classes, count, the shard's fingerprint (``records.fingerprint``) and the digest of
the stage inputs. A chunk is done iff its sidecar matches the inputs and the shard is
unchanged (``records.unchanged``), so a killed stage redoes only unfinished
chunks, and a SLURM array task ``t`` of ``T`` makes the chunks ``k = t (mod T)``.
``manifest.json`` is written once every chunk is done.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoguide.core.typed_settings import to_dict
from autoguide.data.registry import TrainingSet
from autoguide.data.sample_files import to_uint8
from autoguide.data.shards import read_shard_index, write_shards
from autoguide.io import read_card, write_text_atomic
from autoguide.io.digest import file_sha256
from autoguide.sample.batch import generate_images
from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.guidance_spec import GuidanceSettings, build_guidance
from autoguide.sample.labels import class_labels
from autoguide.sample.sampler_settings import GenerationSettings
from autoguide.sample.seeds import format_seeds
from autoguide.sims.records import canonical, fingerprint, run_stage, spec_digest, unchanged

log = logging.getLogger(__name__)

STAGE = "synthesize"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "autoguide-sims-synthetic/1"
SHARD_DIR = "shards"
CHUNK_DIR = "chunks"
KINDS = {"synthetic": "synth", "real": "real"}


@dataclass(frozen=True)
class SynthesisSettings:
    """What to synthesize (the ``synthesize`` config group, with ``num_images`` resolved)."""

    #: images in the set, of which round(real_fraction * n) real ones (a subset drawn with real_seed)
    num_images: int
    real_fraction: float = 0.0
    real_seed: int = 0
    #: synthetic image i comes from seed first_seed + i, its class from the class_labels policy
    first_seed: int = 0
    class_labels: Any = "random"
    #: images per shard (and per resumable chunk)
    shard_size: int = 10000
    #: how the synthetic images are sampled (sampler, batch, precision) and guided (a guidance term)
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(batch_size=256))
    guidance: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if int(self.num_images) != self.num_images or self.num_images < 1:
            raise ValueError(f"synthesize.num_images={self.num_images!r}: expected a positive integer")
        if not 0.0 <= self.real_fraction < 1.0:
            raise ValueError(f"synthesize.real_fraction={self.real_fraction!r}: expected a fraction in [0, 1)")
        if int(self.shard_size) != self.shard_size or self.shard_size < 1:
            raise ValueError(f"synthesize.shard_size={self.shard_size!r}: expected a positive integer")
        if self.class_labels == "all":
            raise ValueError(
                "synthesize.class_labels=all: would make label_dim images per seed; use random, an index or a list"
            )

    @property
    def num_real(self) -> int:
        return round(self.real_fraction * self.num_images)

    @property
    def num_synthetic(self) -> int:
        return self.num_images - self.num_real


@dataclass(frozen=True)
class Chunk:
    """One shard to write: synthetic seeds or real-data indices, with their classes."""

    kind: str
    index: int
    items: tuple[int, ...]
    classes: tuple[int, ...] | None

    @property
    def name(self) -> str:
        return f"{KINDS[self.kind]}-{self.index:06d}"


def _cut(kind: str, items: Sequence[int], classes: Sequence[int] | None, size: int) -> list[Chunk]:
    return [
        Chunk(
            kind,
            k,
            tuple(items[start : start + size]),
            None if classes is None else tuple(classes[start : start + size]),
        )
        for k, start in enumerate(range(0, len(items), size))
    ]


def real_selection(num_available: int, count: int, seed: int) -> list[int]:
    """``count`` distinct real-data indices: the first ``count`` of ``RandomState(seed)``'s
    permutation of ``range(num_available)``."""
    if count > num_available:
        raise ValueError(f"synthesize.real_fraction asks for {count} real images but the real data has {num_available}")
    return np.random.RandomState(seed).permutation(num_available)[:count].tolist()


def plan_chunks(settings: SynthesisSettings, label_dim: int, real: TrainingSet | None) -> list[Chunk]:
    """All chunks of the set: the synthetic ones, then the real ones (if any)."""
    seeds = list(range(settings.first_seed, settings.first_seed + settings.num_synthetic))
    policy = (
        list(settings.class_labels)
        if isinstance(settings.class_labels, Sequence) and not isinstance(settings.class_labels, str)
        else settings.class_labels
    )
    seeds, classes = class_labels(policy, seeds, label_dim) if seeds else (seeds, None)
    chunks = _cut("synthetic", seeds, classes, settings.shard_size)
    if settings.num_real:
        if real is None:
            raise ValueError(
                "synthesize.real_fraction > 0 needs the real data (real_data=<dataset config> or base_run=<run folder>)"
            )
        indices = real_selection(len(real), settings.num_real, settings.real_seed)
        real_classes = [int(real[i][1]) for i in indices] if label_dim else None
        chunks += _cut("real", indices, real_classes, settings.shard_size)
    return chunks


def _sidecar(folder: Path, chunk: Chunk) -> Path:
    return folder / CHUNK_DIR / f"{chunk.name}.json"


def _shard(folder: Path, chunk: Chunk) -> Path:
    return folder / SHARD_DIR / f"{chunk.name}.tar"


def chunk_done(folder: Path, chunk: Chunk, digest: str) -> dict[str, Any] | None:
    """The chunk's sidecar if the chunk is complete for the inputs ``digest``, else ``None``."""
    path = _sidecar(folder, chunk)
    try:
        side = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    expected = {
        "spec": digest,
        "items": list(chunk.items),
        "classes": None if chunk.classes is None else list(chunk.classes),
    }
    if any(side.get(k) != v for k, v in expected.items()):
        return None
    return side if unchanged(_shard(folder, chunk), side.get("shard", {})) else None


def write_chunk(folder: Path, chunk: Chunk, pixels: np.ndarray, digest: str) -> dict[str, Any]:
    """Write the chunk's shard (uint8 ``[N, H, W, C]``) and then its sidecar, both atomically."""
    parts = folder / "tmp" / chunk.name
    shutil.rmtree(parts, ignore_errors=True)
    labels = chunk.classes if chunk.classes is not None else [None] * len(pixels)
    (written,) = write_shards(zip(pixels, labels, strict=True), parts, prefix=chunk.name, maxcount=len(pixels))
    shard = _shard(folder, chunk)
    shard.parent.mkdir(parents=True, exist_ok=True)
    os.replace(written, shard)
    shutil.rmtree(parts, ignore_errors=True)
    side = {
        "file": f"{SHARD_DIR}/{shard.name}",
        "kind": chunk.kind,
        "count": len(pixels),
        "shard": fingerprint(shard),
        "items": list(chunk.items),
        "classes": None if chunk.classes is None else list(chunk.classes),
        "spec": digest,
    }
    write_text_atomic(_sidecar(folder, chunk), json.dumps(side) + "\n")
    return side


def synthetic_pixels(
    net: nn.Module, terms: Sequence[GuidanceTerm], chunk: Chunk, settings: SynthesisSettings, device: torch.device
) -> np.ndarray:
    """Sample the chunk's seeds with the shared sampler."""
    images = generate_images(
        net,
        chunk.items,
        None if chunk.classes is None else list(chunk.classes),
        terms,
        device=device,
        **settings.generation.options(),
    )
    return to_uint8(images)


def real_pixels(real: TrainingSet, chunk: Chunk) -> np.ndarray:
    """The chunk's real images (already uint8-exact for image datasets)."""
    return to_uint8(torch.stack([real[i][0] for i in chunk.items]))


def synthesis_spec(settings: SynthesisSettings, source: Path, real_data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stage inputs: settings that change the images, and the source model's hash."""
    return canonical(
        {
            "source_sha256": file_sha256(source),
            "num_synthetic": settings.num_synthetic,
            "num_real": settings.num_real,
            "real_data": dict(real_data) if settings.num_real and real_data is not None else None,
            "real_seed": settings.real_seed if settings.num_real else None,
            "first_seed": settings.first_seed,
            "class_labels": settings.class_labels,
            "shard_size": settings.shard_size,
            "precision": settings.generation.precision,
            "sampler": to_dict(settings.generation.sampler),
            "guidance": dict(settings.guidance or {"kind": "none"}),
        }
    )


def make_chunks(
    folder: Path,
    chunks: Sequence[Chunk],
    digest: str,
    settings: SynthesisSettings,
    load_model: Callable[[str], nn.Module],
    source: Path,
    real: TrainingSet | None,
    device: torch.device,
    task: int = 0,
    num_tasks: int = 1,
) -> list[Chunk]:
    """Write this task's unfinished chunks (``k = task mod num_tasks``); return the chunks of
    the whole set that are still missing afterwards."""
    if not 0 <= task < num_tasks:
        raise ValueError(f"synthesize.task={task} must lie in [0, synthesize.num_tasks={num_tasks})")
    mine = [c for position, c in enumerate(chunks) if position % num_tasks == task]
    todo = [c for c in mine if chunk_done(folder, c, digest) is None]
    log.info(
        "synthesize: %d chunks in the set, %d for task %d/%d, %d to write",
        len(chunks),
        len(mine),
        task,
        num_tasks,
        len(todo),
    )
    net: nn.Module | None = None
    terms: list[GuidanceTerm] = []
    for chunk in todo:
        if chunk.kind == "synthetic":
            if net is None:
                net = load_model(str(source))
                terms = build_guidance(GuidanceSettings.from_mapping(settings.guidance), load_model)
            pixels = synthetic_pixels(net, terms, chunk, settings, device)
        else:
            assert real is not None  # plan_chunks made real chunks only with the real set
            pixels = real_pixels(real, chunk)
        write_chunk(folder, chunk, pixels, digest)
        log.info("synthesize: wrote %s (%d images)", chunk.name, len(chunk.items))
    return [c for c in chunks if chunk_done(folder, c, digest) is None]


def write_manifest(
    folder: Path, chunks: Sequence[Chunk], digest: str, spec: Mapping[str, Any], source: Path, label_dim: int
) -> dict[str, Any]:
    """Write ``manifest.json`` describing the complete set and return it."""
    shards = []
    for chunk in chunks:
        side = chunk_done(folder, chunk, digest)
        if side is None:
            raise RuntimeError(f"{_shard(folder, chunk)}: chunk is not complete; cannot write the manifest")
        entry = {"file": side["file"], "kind": chunk.kind, "count": side["count"], "sha256": side["shard"]["sha256"]}
        entry["seeds" if chunk.kind == "synthetic" else "real_indices"] = (
            format_seeds(chunk.items) if chunk.kind == "synthetic" else list(chunk.items)
        )
        if chunk.classes is not None:
            entry["class_counts"] = np.bincount(chunk.classes, minlength=label_dim).tolist()
        shards.append(entry)
    manifest = {
        "format": MANIFEST_FORMAT,
        "count": sum(s["count"] for s in shards),
        "num_synthetic": spec["num_synthetic"],
        "num_real": spec["num_real"],
        "label_dim": label_dim,
        "source_model": {"path": str(source), "sha256": spec["source_sha256"], "card": read_card(source)},
        "inputs": dict(spec),
        "shards": shards,
    }
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify_manifest(folder: Path) -> dict[str, Any]:
    """Read ``manifest.json`` and check it against the shards: every shard present with its
    SHA-256 and sample count, counts adding up. Errors name the file and what differs."""
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the synthetic-set manifest ({err})") from err
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    total = 0
    for entry in manifest["shards"]:
        shard = folder / entry["file"]
        if not shard.is_file() or file_sha256(shard) != entry["sha256"]:
            raise ValueError(f"{shard}: missing or its SHA-256 differs from {path}")
        found = len(read_shard_index(shard))
        if found != entry["count"]:
            raise ValueError(f"{shard}: holds {found} samples, {path} says {entry['count']}")
        total += found
    if total != manifest["count"] or manifest["count"] != manifest["num_synthetic"] + manifest["num_real"]:
        raise ValueError(
            f"{path}: count {manifest['count']} disagrees with the shards ({total}) or with num_synthetic + num_real"
        )
    return manifest


def check_label_coverage(chunks: Sequence[Chunk], label_dim: int) -> None:
    """The shard reader infers the number of classes from the largest label present, so a
    conditional set must contain the last class; a clear error otherwise."""
    if label_dim and not any(c.classes and label_dim - 1 in c.classes for c in chunks):
        raise ValueError(
            f"synthesize: no image of class {label_dim - 1} in the set, so the shards would read as fewer than "
            f"{label_dim} classes; make more images or give synthesize.class_labels as a list cycling all classes"
        )


def synthesize_stage(
    folder: Path,
    source: Path,
    settings: SynthesisSettings,
    label_dim: int,
    load_model: Callable[[str], nn.Module],
    device: torch.device,
    real: TrainingSet | None = None,
    real_data: Mapping[str, Any] | None = None,
    task: int = 0,
    num_tasks: int = 1,
) -> dict[str, Any] | None:
    """Run (or skip) the stage; returns the verified manifest, or ``None`` while chunks of
    other array tasks are still missing."""
    spec = synthesis_spec(settings, source, real_data)
    digest = spec_digest(spec)
    chunks = plan_chunks(settings, label_dim, real)
    check_label_coverage(chunks, label_dim)

    def work():
        missing = make_chunks(folder, chunks, digest, settings, load_model, source, real, device, task, num_tasks)
        if missing:
            log.info("synthesize: %d chunks are left to other tasks (%s ...)", len(missing), missing[0].name)
            return None
        manifest = write_manifest(folder, chunks, digest, spec, source, label_dim)
        shutil.rmtree(folder / "tmp", ignore_errors=True)
        return [folder / MANIFEST_NAME, *(folder / s["file"] for s in manifest["shards"])], {"count": manifest["count"]}

    role = None if num_tasks == 1 else f"task{task}-of-{num_tasks}"
    if run_stage(folder, STAGE, spec, work, role) is None:
        return None
    return verify_manifest(folder)
