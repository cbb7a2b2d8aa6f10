"""``autoguide-import-edm2 FILE.pkl OUT [--nimg N] [--ema-std S] [--vae FOLDER]``: a released
EDM2 network pickle as an autoguide model file, read without running any of its code
(``autoguide.io.edm2_import``). ``--vae``: the local VAE folder a latent release decodes with;
its identity (hashes) goes into the card, so a later ``vae_path`` with another VAE is refused."""

from __future__ import annotations

import argparse

from autoguide.apps.cli import json_command
from autoguide.data.vae import vae_identity
from autoguide.io.edm2_import import EDM2ImportError, import_edm2


def run(args: argparse.Namespace) -> dict:
    """Import as ``args`` say; returns the output path and the card."""
    vae = None if args.vae is None else vae_identity(args.vae)
    return {"out": str(args.out), **import_edm2(args.pkl, args.out, nimg=args.nimg, ema_std=args.ema_std, vae=vae)}


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
    parser.add_argument(
        "--vae", default=None, help="local VAE folder a latent release decodes with (its hashes go into the card)"
    )
    json_command(parser, argv, run, (EDM2ImportError, FileNotFoundError))


if __name__ == "__main__":
    main()
