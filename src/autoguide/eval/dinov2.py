"""DINOv2 ViT-L/14 features (Oquab et al. 2023) for FD_DINOv2 (Stein et al. 2023, "Exposing
flaws of generative model evaluation metrics", used by EDM2 next to FID).

The network code comes from a LOCAL torch.hub folder (a checkout of the DINOv2 repository
with its ``hubconf.py``): ``torch.hub.load(repo, "dinov2_vitl14", source="local",
pretrained=False)``, then the weights from a LOCAL file (``dinov2_vitl14_pretrain.pth``, a plain
state dict) through the weights-only unpickler. Nothing is downloaded.

Preprocessing as EDM2's FD_DINOv2 detector (``dinov2_input``): the uint8 values as float32,
bicubic resize with antialiasing to 224x224 (``F.interpolate(..., mode="bicubic",
antialias=True)``, Keys' cubic with ``a = -0.5`` widened by the scale factor when shrinking),
``/ 255``, then ImageNet normalisation ``(x - mean) / std``; the feature is the network output,
the final class token (1024 values). The one difference: gray images are repeated to RGB
(EDM2 only measures RGB).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from autoguide.eval.features import FeatureExtractor, as_rgb, require_file

ENTRY = "dinov2_vitl14"
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
REPO_URL = "https://github.com/facebookresearch/dinov2"
RESOLUTION = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def dinov2_input(images: torch.Tensor) -> torch.Tensor:
    """EDM2's DINOv2 input from uint8 images ``[N, 1 or 3, H, W]``:
    ``(resize_224(float(x)) / 255 - mean) / std`` per channel (the module docstring)."""
    x = as_rgb(images).to(torch.float32)
    x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bicubic", antialias=True, align_corners=False) / 255
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class DinoV2Features(FeatureExtractor):
    """Class-token features ``[N, 1024]`` of uint8 images ``[N, 1 or 3, H, W]``."""

    name = "dinov2"
    dim = 1024

    def __init__(self, repo: str | os.PathLike, weights: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        repo = Path(repo).expanduser()
        require_file(
            repo / "hubconf.py",
            "DINOv2 torch.hub folder (hubconf.py)",
            f"clone {REPO_URL} to {repo} on a machine with internet access, or set extractors.dinov2.repo=<folder>",
        )
        weights = require_file(
            weights,
            "DINOv2 ViT-L/14 weights",
            f"download {WEIGHTS_URL} and copy it there, or set extractors.dinov2.weights=<file> "
            "(it is never downloaded at run time)",
        )
        super().__init__(weights, torch.device(device))
        net = torch.hub.load(str(repo), ENTRY, source="local", pretrained=False)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net = net.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(dinov2_input(images))
