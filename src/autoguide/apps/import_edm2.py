"""``autoguide-import-edm2 FILE.pkl OUT [--nimg N] [--ema-std S]``: a released EDM2 network
pickle as an autoguide model file, read without running any of its code
(``autoguide.io.edm2_import``)."""

from __future__ import annotations

import argparse
import json

from autoguide.io.edm2_import import EDM2ImportError, import_edm2


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``autoguide-import-edm2``."""
    parser = argparse.ArgumentParser(
        prog="autoguide-import-edm2",
        description="Convert a released EDM2 network pickle into an autoguide model file without running its code.",
    )
    parser.add_argument("pkl", help="EDM2 network pickle, e.g. edm2-img512-xs-0134217-0.125.pkl")
    parser.add_argument("out", help="output model file (.safetensors)")
    parser.add_argument("--nimg", type=int, default=None, help="training images seen (default: from the file name)")
    parser.add_argument("--ema-std", type=float, default=None, help="EMA relative std (default: from the file name)")
    args = parser.parse_args(argv)
    try:
        card = import_edm2(args.pkl, args.out, nimg=args.nimg, ema_std=args.ema_std)
    except EDM2ImportError as err:
        parser.exit(1, f"autoguide-import-edm2: error: {err}\n")
    print(json.dumps({"out": str(args.out), **card}, indent=2))


if __name__ == "__main__":
    main()
