"""Writers for generated samples: PNG grid, per-image PNGs, ``.npz``, webdataset shards, and a
scatter plot for 2D toy samples. Every file is written atomically (temp name + rename).

Images are float ``[N, C, H, W]`` in [-1, 1] and are stored as uint8 with the data package's
convention ``u = clip(round((x + 1) * 127.5), 0, 255)``; 2D samples are ``[N, 2]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoguide.core.typed_settings import ConfigError
from autoguide.data.images import CHANNELS, encode_png, quantize
from autoguide.data.shards import write_shards
from autoguide.io import atomic_path

FORMATS = ("grid", "png", "npz", "shards")
TOY_FORMATS = ("grid", "npz")


@dataclass(frozen=True, kw_only=True)
class OutputSettings:
    """Where and how generated samples are written (the ``output`` config node): ``dir``,
    ``formats`` (any of ``FORMATS``; 2D samples take ``grid``, a scatter plot, and ``npz``),
    ``grid_cols`` (images per grid row, None: ``ceil(sqrt(N))``), ``shard_size`` (images per
    webdataset shard)."""

    dir: str
    formats: tuple[str, ...] = ("grid",)
    grid_cols: int | None = None
    shard_size: int = 10000

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise ConfigError(f"output.formats: unknown format(s) {unknown}; valid: {list(FORMATS)}")


def write_outputs(
    output: OutputSettings,
    samples: torch.Tensor,
    seeds: Sequence[int],
    classes: Sequence[int] | None,
    suffix: str = "",
    title: str = "",
) -> None:
    """Write ``samples`` (images ``[N, C, H, W]`` in [-1, 1], or 2D points ``[N, 2]``) in every
    format of ``output``; ``suffix`` tells the files of one process apart (``-rank003``)."""
    out = Path(output.dir)
    toy = samples.ndim == 2
    if toy and set(output.formats) - set(TOY_FORMATS):
        raise ConfigError(
            f"output.formats={list(output.formats)}: png and shards need images; "
            f"2D samples take {list(TOY_FORMATS)} (grid is a scatter plot)"
        )
    if "grid" in output.formats:
        if toy:
            write_scatter(out / f"scatter{suffix}.png", samples, classes, title=title)
        else:
            write_grid(out / f"grid{suffix}.png", samples, output.grid_cols)
    if "png" in output.formats:
        write_pngs(out / "images", samples, image_names(seeds, classes))
    if "npz" in output.formats:
        write_npz(out / f"samples{suffix}.npz", samples, seeds, classes)
    if "shards" in output.formats:
        write_image_shards(out / "shards", f"samples{suffix}", samples, classes, output.shard_size)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` of float images ``[N, C, H, W]`` in [-1, 1]."""
    if images.ndim != 4 or images.shape[1] not in CHANNELS:
        raise ValueError(
            f"PNG output needs images [N, C, H, W] with C in {CHANNELS}, got shape {list(images.shape)}; "
            "use output.formats=[npz] for latents"
        )
    return quantize(images).permute(0, 2, 3, 1).numpy()


def image_names(seeds: Sequence[int], classes: Sequence[int] | None) -> list[str]:
    """``{seed:06d}``, or ``{seed:06d}-{class:04d}`` when a seed occurs with several classes."""
    if classes is None or len(set(seeds)) == len(seeds):
        return [f"{s:06d}" for s in seeds]
    return [f"{s:06d}-{c:04d}" for s, c in zip(seeds, classes, strict=True)]


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile uint8 ``[N, H, W, C]`` row by row into ``[rows H, cols W, C]`` (empty cells black)."""
    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * cols, h, w, c), dtype=np.uint8)
    canvas[:n] = images
    return canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def write_grid(path: Path, images: torch.Tensor, cols: int | None = None) -> None:
    """One PNG with all images, ``cols`` per row (default ``ceil(sqrt(N))``)."""
    pixels = to_uint8(images)
    _write_bytes(path, encode_png(tile(pixels, cols or math.ceil(math.sqrt(len(pixels))))))


def write_pngs(folder: Path, images: torch.Tensor, names: Sequence[str]) -> None:
    """One PNG per image, ``folder/<name>.png``."""
    for name, pixels in zip(names, to_uint8(images), strict=True):
        _write_bytes(folder / f"{name}.png", encode_png(pixels))


def write_npz(path: Path, samples: torch.Tensor, seeds: Sequence[int], classes: Sequence[int] | None) -> None:
    """``.npz`` with ``seeds`` [N], ``labels`` [N] (class index, -1 if unconditional) and either
    ``images`` (uint8 [N, H, W, C]) for images with 1 or 3 channels or ``samples`` (float32,
    as generated) otherwise (2D points, latents)."""
    arrays: dict[str, Any] = {
        "seeds": np.asarray(seeds, dtype=np.int64),
        "labels": np.asarray(classes if classes is not None else [-1] * len(seeds), dtype=np.int64),
    }
    if samples.ndim == 4 and samples.shape[1] in CHANNELS:
        arrays["images"] = to_uint8(samples)
    else:
        arrays["samples"] = samples.to(torch.float32).numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_image_shards(
    folder: Path, prefix: str, images: torch.Tensor, classes: Sequence[int] | None, maxcount: int
) -> list[Path]:
    """Webdataset shards ``folder/{prefix}-NNNNNN.tar`` (``autoguide.data.shards.write_shards``)."""
    pixels = to_uint8(images)
    labels = classes if classes is not None else [None] * len(pixels)
    return write_shards(zip(pixels, labels, strict=True), folder, prefix=prefix, maxcount=maxcount)


def write_scatter(path: Path, points: torch.Tensor, classes: Sequence[int] | None, title: str = "") -> None:
    """Scatter plot PNG of 2D samples ``[N, 2]``, coloured by class."""
    from matplotlib.figure import Figure

    xy = points.to(torch.float32).numpy()
    fig = Figure(figsize=(6, 6), dpi=120)
    ax = fig.add_subplot()
    style = (
        {"c": np.asarray(classes), "cmap": "tab10", "vmin": 0, "vmax": 9} if classes is not None else {"c": "tab:blue"}
    )
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.6, linewidths=0, **style)
    ax.set_aspect("equal")
    ax.set_title(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
