"""DINOv2 ViT-L/14 features (Oquab et al. 2023) for FD_DINOv2 (Stein et al. 2023, "Exposing
flaws of generative model evaluation metrics", used by EDM2 next to FID).

The network code comes from a LOCAL torch.hub folder (a checkout of the DINOv2 repository
with its ``hubconf.py``): ``torch.hub.load(repo, "dinov2_vitl14", source="local",
pretrained=False)``, then the weights from a LOCAL file (``dinov2_vitl14_pretrain.pth``, a plain
state dict) through the weights-only unpickler. Nothing is downloaded.

Preprocessing: uint8 -> [0, 1], gray repeated to RGB, bicubic resize (antialiased) to 224x224,
ImageNet normalisation ``(x - mean) / std``; the feature is the network output, the final
class token (1024 values).
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


class DinoV2Features(FeatureExtractor):
    """Class-token features ``[N, 1024]`` of uint8 images ``[N, 1 or 3, H, W]``."""

    name = "dinov2"

    def __init__(self, repo: str | os.PathLike, weights: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        repo = Path(repo).expanduser()
        require_file(
            repo / "hubconf.py", "DINOv2 torch.hub folder (hubconf.py)",
            f"clone {REPO_URL} to {repo} on a machine with internet access, or set extractors.dinov2.repo=<folder>",
        )
        weights = require_file(
            weights, "DINOv2 ViT-L/14 weights",
            f"download {WEIGHTS_URL} and copy it there, or set extractors.dinov2.weights=<file> "
            "(it is never downloaded at run time)",
        )
        super().__init__(weights, torch.device(device))
        net = torch.hub.load(str(repo), ENTRY, source="local", pretrained=False)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net = net.eval().requires_grad_(False).to(self.device)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = as_rgb(images).to(torch.float32) / 255
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bicubic", antialias=True, align_corners=False)
        return self.net((x - self.mean) / self.std)
