"""Convert an image folder or an ``.npz`` archive to WebDataset shards.

    python -m autoguide.data.convert SRC OUT_DIR [--maxcount N] [--prefix NAME]

SRC is a folder (see ``ImageFolderDataset``: class subfolders, or ``--labels-json``) or an
``.npz`` file (keys ``images``, optional ``labels``). Pixels are copied losslessly (PNG);
labels become ``cls`` entries (none for unlabeled data). Prints each shard written and a total.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from autoguide.data.folder import ImageFolderDataset, NpzDataset
from autoguide.data.shards import write_shards


def open_source(src: Path, labels_json: Path | None) -> ImageFolderDataset | NpzDataset:
    """The dataset stored at ``src`` (a folder or an ``.npz`` file)."""
    if src.is_dir():
        return ImageFolderDataset(src, labels_json)
    if src.suffix.lower() == ".npz":
        if labels_json is not None:
            raise ValueError(
                f"{src}: --labels-json applies to image folders; npz labels come from key 'labels'"
            )
        return NpzDataset(src)
    raise ValueError(f"{src}: expected an image folder or an .npz file")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m autoguide.data.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src", type=Path, help="image folder or .npz file")
    parser.add_argument("out_dir", type=Path, help="folder for the .tar shards")
    parser.add_argument(
        "--maxcount", type=int, default=10000, help="samples per shard (default 10000)"
    )
    parser.add_argument("--prefix", default="data", help="shard name prefix (default 'data')")
    parser.add_argument("--labels-json", type=Path, default=None, help="labels for an image folder")
    args = parser.parse_args(argv)
    if args.maxcount <= 0:
        parser.error(f"--maxcount must be positive, got {args.maxcount}")
    try:
        dataset = open_source(args.src, args.labels_json)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    labeled = dataset.label_dim > 0

    def samples():
        for index in range(len(dataset)):
            pixels, label = dataset.read_uint8(index)
            yield pixels, label if labeled else None

    paths = write_shards(samples(), args.out_dir, args.prefix, args.maxcount)
    for index, path in enumerate(paths):
        count = min(args.maxcount, len(dataset) - index * args.maxcount)
        print(f"wrote {path} ({count} samples)")
    print(
        f"{len(dataset)} images {dataset.shape} "
        f"({dataset.label_dim} classes) from {args.src} -> {len(paths)} shards in {args.out_dir}"
    )


if __name__ == "__main__":
    main()
