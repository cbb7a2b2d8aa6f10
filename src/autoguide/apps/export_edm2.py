"""``autoguide-export-edm2 MODEL OUT [--fp16]``: an autoguide UNet model as a state dict with
the reference (NVlabs/edm2) names (``autoguide.io.edm2_export``)."""

from __future__ import annotations

import argparse
import json

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
    args = parser.parse_args(argv)
    try:
        kwargs = export_edm2(args.model, args.out, dtype="float16" if args.fp16 else "float32")
    except ValueError as err:
        parser.exit(1, f"autoguide-export-edm2: error: {err}\n")
    print(json.dumps({"out": str(args.out), "precond_kwargs": kwargs}, indent=2))


if __name__ == "__main__":
    main()
