"""``autoguide-export-edm2 MODEL OUT [--fp16]``: an autoguide UNet model as a state dict with
the reference (NVlabs/edm2) names (``autoguide.io.edm2_export``)."""

from __future__ import annotations

import argparse

from autoguide.apps.cli import json_command
from autoguide.io.edm2_export import export_edm2


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``autoguide-export-edm2``."""
    parser = argparse.ArgumentParser(
        prog="autoguide-export-edm2",
        description="Export an autoguide UNet model as a state dict with the NVlabs/edm2 names.",
    )
    parser.add_argument("model", help="autoguide model file (.safetensors with a card)")
    parser.add_argument("out", help="output: .pt/.pth (torch state dict) or .safetensors")
    parser.add_argument("--fp16", action="store_true", help="store float16 like the released pickles")
    json_command(
        parser,
        argv,
        lambda a: {
            "out": str(a.out),
            "precond_kwargs": export_edm2(a.model, a.out, dtype="float16" if a.fp16 else "float32"),
        },
    )


if __name__ == "__main__":
    main()
