"""Per-image seeds and random streams.

docs/design.md, "Conventions" (randomness): every image draws all of its randomness (initial noise, churn noise,
the random class of ICG, the embedding noise of TSG, ...) from its own seed, so an image
depends on its seed only, never on the batch it was drawn in or on the number of processes.

Image ``i`` with seed ``s_i`` owns one CPU ``torch.Generator`` per named stream:
``noise`` is seeded with ``s_i`` itself (``torch.randn(shape, generator=torch.Generator()
.manual_seed(s_i))`` reproduces an image's initial noise anywhere); every other stream
``name`` is seeded with ``SeedSequence([s_i, crc32(name)])``, so streams never share values
and adding a stream (turning on churn, a new guidance term) leaves the others unchanged.
Values are drawn on the CPU in float32 and then moved, which also makes them independent of
the device type.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch

NOISE_STREAM = "noise"


def parse_seeds(spec: int | str | Iterable[int | str]) -> list[int]:
    """Seeds from ``5``, ``"0-63"``, ``"1,4,10-12"`` or a list of those; ranges are inclusive.

    Raises ``ValueError`` naming the bad item for negative seeds, reversed ranges, repeated
    seeds (their images would be identical and their file names would clash) or non-integers.
    """
    items = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, int) else list(spec)
    seeds: list[int] = []
    for item in items:
        text = str(item).strip()
        try:
            if "-" in text[1:]:
                lo, hi = (int(part) for part in text.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(text))
        except ValueError:
            raise ValueError(
                f"seeds: cannot parse {text!r}; expected an integer or an inclusive range like '0-63'"
            ) from None
    if not seeds:
        raise ValueError(f"seeds: {spec!r} names no seed")
    if min(seeds) < 0:
        raise ValueError(f"seeds: must be >= 0, got {min(seeds)} in {spec!r}")
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})[:5]
        raise ValueError(f"seeds: {spec!r} repeats seed(s) {repeated}")
    return seeds


def format_seeds(seeds: Sequence[int]) -> str:
    """Compact inclusive ranges, ``[0, 1, 2, 7]`` -> ``"0-2,7"`` (sorted; ``parse_seeds`` reads it back)."""
    parts, ordered = [], sorted(seeds)
    start = prev = ordered[0]
    for s in [*ordered[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if s is not None:
            start = prev = s
    return ",".join(parts)


def stream_seed(seed: int, name: str) -> int:
    """The seed of stream ``name`` of image seed ``seed`` (``seed`` itself for ``noise``)."""
    if name == NOISE_STREAM:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1, np.uint64)[0])


class SeedStreams:
    """Named per-image random streams for a batch of images with the given seeds.

    Each call draws the next values of every image's stream, one image at a time, so the
    values an image receives depend only on its seed, the stream name and how many values
    that stream gave it before.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self._generators: dict[str, list[torch.Generator]] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def _stream(self, name: str) -> list[torch.Generator]:
        if name not in self._generators:
            self._generators[name] = [torch.Generator().manual_seed(stream_seed(s, name)) for s in self.seeds]
        return self._generators[name]

    def randn(self, name: str, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Standard normal values ``[num_images, *shape]`` (float32) from stream ``name``."""
        values = [torch.randn(tuple(shape), generator=g) for g in self._stream(name)]
        return torch.stack(values).to(device)

    def rand(self, name: str, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform values in ``[0, 1)`` ``[num_images, *shape]`` (float32) from stream ``name``."""
        values = [torch.rand(tuple(shape), generator=g) for g in self._stream(name)]
        return torch.stack(values).to(device)

    def randint(self, name: str, high: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """One integer per image, uniform in ``[0, high)``, ``[num_images]`` (int64)."""
        values = [torch.randint(high, (1,), generator=g) for g in self._stream(name)]
        return torch.cat(values).to(device)


def seed_noise(seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The initial unit-variance noise ``[len(seeds), *shape]`` of each image (stream ``noise``)."""
    return SeedStreams(seeds).randn(NOISE_STREAM, shape, device)
