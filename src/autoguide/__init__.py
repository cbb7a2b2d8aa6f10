"""autoguide: train EDM2 diffusion models and the bad versions of them that guide them."""

from autoguide.io import load_denoiser

__version__ = "0.1.0"
__all__ = ["__version__", "load_denoiser"]
