"""``autoguide-import-edm2 FILE.pkl OUT [--nimg N] [--ema-std S]``: a released EDM2 network
pickle as an autoguide model file, read without running any of its code
(``autoguide.io.edm2_import``)."""

from __future__ import annotations

import argparse

from autoguide.apps.cli import json_command
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
    json_command(
        parser, argv, lambda a: {"out": str(a.out), **import_edm2(a.pkl, a.out, nimg=a.nimg, ema_std=a.ema_std)}, (EDM2ImportError,)
    )


if __name__ == "__main__":
    main()
