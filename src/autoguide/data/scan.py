"""Pre-scan of the images a latent set is encoded from (``autoguide-encode``), before anything
is written: every image's header (format, mode, size; ``data.images.read_header``, which also
catches truncated JPEG and PNG files) is read on a thread pool, and every image that could not
be encoded is listed at once, one line per file.

An image is a problem when it cannot be read (not an image, truncated, broken) or, without
``convert_rgb``, when its mode is not RGB (palette images are made RGB; grayscale, CMYK, ...
need ``--convert-rgb``). Sizes are no problem: the ADM crop shrinks and enlarges
(``data.images.adm_center_crop``).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from autoguide.data.images import CONVERT_RGB_HINT, ImageHeader

LISTED = 20
"""Problems listed one per line in an error; the rest are counted."""
BLOCK = 256
"""Images per task of the thread pool."""
RGB_MODES = ("RGB", "P")
"""Modes the crop takes without ``convert_rgb`` (a palette image is made RGB when decoded)."""


class ImageSource(Protocol):
    """A source of images with headers: the image folder, ``.npz`` and image-shard datasets."""

    def __len__(self) -> int: ...

    def header(self, index: int) -> ImageHeader: ...

    def where(self, index: int) -> str: ...


@dataclass(frozen=True)
class ImageProblem:
    """Image ``index`` of the source (file ``where``) cannot be encoded: ``problem``."""

    index: int
    where: str
    problem: str

    def line(self) -> str:
        return f"{self.where}: {self.problem}"


class BadImages(ValueError):
    """Some images of a source cannot be encoded; the message lists them."""

    def __init__(self, source: str, problems: Sequence[ImageProblem], total: int, remedy: str) -> None:
        self.problems = list(problems)
        super().__init__(problem_listing(source, self.problems, total, remedy))


def problem_listing(source: str, problems: Sequence[ImageProblem], total: int, remedy: str) -> str:
    """``"{source}: N of M images cannot be encoded; {remedy}:"`` and then one line per problem
    (the first ``LISTED``, then how many more)."""
    lines = [f"{source}: {len(problems)} of {total} images cannot be encoded; {remedy}:"]
    lines += [f"  {p.line()}" for p in problems[:LISTED]]
    if len(problems) > LISTED:
        lines.append(f"  ... and {len(problems) - LISTED} more")
    return "\n".join(lines)


def header_problem(header: ImageHeader, convert_rgb: bool) -> str | None:
    """Why an image with this header cannot be encoded (``None``: it can)."""
    if convert_rgb or header.mode in RGB_MODES:
        return None
    return f"image mode {header.mode!r} ({header.format}), not RGB; {CONVERT_RGB_HINT}"


def _scan_block(source: ImageSource, indices: range, convert_rgb: bool) -> list[ImageProblem]:
    problems = []
    for index in indices:
        try:
            problem = header_problem(source.header(index), convert_rgb)
        except ValueError as error:  # read_header names the file; keep the reason only
            problem = str(error).removeprefix(f"{source.where(index)}: ")
        if problem is not None:
            problems.append(ImageProblem(index, source.where(index), problem))
    return problems


def scan_images(source: ImageSource, convert_rgb: bool, threads: int | None = None) -> list[ImageProblem]:
    """Every image of ``source`` that cannot be encoded, in source order; headers are read on
    ``threads`` threads (``None``: Python's default pool size) in blocks of ``BLOCK`` images."""
    blocks = [range(start, min(start + BLOCK, len(source))) for start in range(0, len(source), BLOCK)]
    with ThreadPoolExecutor(threads) as pool:
        return [p for found in pool.map(lambda block: _scan_block(source, block, convert_rgb), blocks) for p in found]
