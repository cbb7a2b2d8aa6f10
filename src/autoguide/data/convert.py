"""Convert an image folder or an ``.npz`` archive to WebDataset shards (``autoguide-convert``).

The source is a folder (see ``ImageFolderDataset``: class subfolders, or a labels JSON) or an
``.npz`` file (keys ``images``, optional ``labels``). Pixels are copied losslessly (PNG);
labels become ``cls`` entries (none for unlabeled data). ``open_source`` also opens image
shards (a ``.tar`` file or a folder of them), the third kind of source ``autoguide-encode`` reads.
"""

from __future__ import annotations

from pathlib import Path

from autoguide.data.folder import ImageFolderDataset, NpzDataset
from autoguide.data.shards import IndexedShardDataset, write_shards

SOURCE_KINDS = ("folder", "npz", "shards")


def source_kind(src: Path) -> str:
    """``folder`` (images), ``npz`` or ``shards`` (a ``.tar`` file, or a folder whose files are
    all ``.tar``); anything else is an error naming ``src``."""
    if src.is_dir():
        files = [p for p in src.iterdir() if p.is_file()]
        return "shards" if files and all(p.suffix.lower() == ".tar" for p in files) else "folder"
    kinds = {".npz": "npz", ".tar": "shards"}
    if src.is_file() and src.suffix.lower() in kinds:
        return kinds[src.suffix.lower()]
    raise ValueError(f"{src}: expected an image folder or an .npz file (or image shards, .tar)")


SourceDataset = ImageFolderDataset | NpzDataset | IndexedShardDataset
"""A dataset of source images with labels: ``len``, ``label_dim``, ``read_uint8(i)``, ``header(i)``, ``where(i)``."""


def open_source(
    src: Path, labels_json: Path | None = None, shards: bool = False, same_size: bool = True, convert_rgb: bool = False
) -> SourceDataset:
    """The dataset stored at ``src`` (a folder or an ``.npz`` file; with ``shards`` also image
    shards). ``same_size=False`` lets the images of a folder differ in size; ``convert_rgb``
    reads a folder's images as RGB."""
    kind = source_kind(src)
    if kind != "folder" and labels_json is not None:
        raise ValueError(f"{src}: a labels JSON applies to image folders; {kind} carry their own labels")
    if kind == "folder":
        return ImageFolderDataset(src, labels_json, same_size, convert_rgb)
    if kind == "npz":
        return NpzDataset(src)
    if not shards:
        raise ValueError(f"{src}: expected an image folder or an .npz file")
    return IndexedShardDataset(src)


def convert_to_shards(
    dataset: ImageFolderDataset | NpzDataset, out_dir: Path, prefix: str = "data", maxcount: int = 10000
) -> list[tuple[Path, int]]:
    """Write every image of ``dataset`` (with its label, if the data has labels) to shards of
    at most ``maxcount`` samples; returns ``(shard path, samples)`` in order."""
    labeled = dataset.label_dim > 0

    def samples():
        for index in range(len(dataset)):
            pixels, label = dataset.read_uint8(index)
            yield pixels, label if labeled else None

    paths = write_shards(samples(), out_dir, prefix, maxcount)
    return [(path, min(maxcount, len(dataset) - index * maxcount)) for index, path in enumerate(paths)]
