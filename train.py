"""Train a diffusion model: ``python train.py [experiment=<name>] [key=value ...]``.

Thin wrapper around ``autoguide.train.cli.main`` (also installed as ``autoguide-train``).
"""

from autoguide.train.cli import main

if __name__ == "__main__":
    main()
