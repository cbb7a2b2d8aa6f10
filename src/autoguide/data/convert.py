"""Convert an image folder or an ``.npz`` archive to WebDataset shards (``autoguide-convert``).

The source is a folder (see ``ImageFolderDataset``: class subfolders, or a labels JSON) or an
``.npz`` file (keys ``images``, optional ``labels``). Pixels are copied losslessly (PNG);
labels become ``cls`` entries (none for unlabeled data).
"""

from __future__ import annotations

from pathlib import Path

from autoguide.data.folder import ImageFolderDataset, NpzDataset
from autoguide.data.shards import write_shards


def open_source(src: Path, labels_json: Path | None = None) -> ImageFolderDataset | NpzDataset:
    """The dataset stored at ``src`` (a folder or an ``.npz`` file)."""
    if src.is_dir():
        return ImageFolderDataset(src, labels_json)
    if src.suffix.lower() == ".npz":
        if labels_json is not None:
            raise ValueError(f"{src}: a labels JSON applies to image folders; npz labels come from key 'labels'")
        return NpzDataset(src)
    raise ValueError(f"{src}: expected an image folder or an .npz file")


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
