"""Train a diffusion model: ``python train.py [experiment=<name>] [key=value ...]``.

Thin wrapper around ``autoguide.apps.train.main`` (also installed as ``autoguide-train``).
"""

from autoguide.apps.train import main

if __name__ == "__main__":
    main()
