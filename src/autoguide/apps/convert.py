"""``autoguide-convert SRC OUT_DIR [--maxcount N] [--prefix NAME] [--labels-json FILE]``: an
image folder or ``.npz`` archive as WebDataset shards (``autoguide.data.convert``). Prints each
shard written and a total."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from autoguide.data.convert import convert_to_shards, open_source
from autoguide.data.shards import IndexedShardDataset


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``autoguide-convert``."""
    parser = argparse.ArgumentParser(
        prog="autoguide-convert", description="Convert an image folder or an .npz archive to WebDataset shards."
    )
    parser.add_argument("src", type=Path, help="image folder or .npz file")
    parser.add_argument("out_dir", type=Path, help="folder for the .tar shards")
    parser.add_argument("--maxcount", type=int, default=10000, help="samples per shard (default 10000)")
    parser.add_argument("--prefix", default="data", help="shard name prefix (default 'data')")
    parser.add_argument("--labels-json", type=Path, default=None, help="labels for an image folder")
    args = parser.parse_args(argv)
    if args.maxcount <= 0:
        parser.error(f"--maxcount must be positive, got {args.maxcount}")
    try:
        dataset = open_source(args.src, args.labels_json)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    assert not isinstance(dataset, IndexedShardDataset)  # open_source opens shards only when asked
    written = convert_to_shards(dataset, args.out_dir, args.prefix, args.maxcount)
    for path, count in written:
        print(f"wrote {path} ({count} samples)")
    print(
        f"{len(dataset)} images {dataset.shape} ({dataset.label_dim} classes) from {args.src} "
        f"-> {len(written)} shards in {args.out_dir}"
    )


if __name__ == "__main__":
    main()
