"""Feature extractors for Fréchet distance and precision/recall, and the batch loop around them.

An extractor maps uint8 images ``[N, C, H, W]`` (C = 1 or 3, values 0..255) to feature rows
``[N, D]``. Every extractor is defined by one weights file; its SHA-256 keys the cached
reference statistics, so new weights never meet stale statistics. Registered extractors
(``autoguide.eval.extractors.build_extractor(name, files, device)``):

| name      | features                                   | config keys          |
|-----------|--------------------------------------------|----------------------|
| inception | Inception-v3 pool3, 2048 (FID)             | weights              |
| dinov2    | DINOv2 ViT-L/14 class token, 1024 (FD_DINOv2) | repo, weights     |
| mnist     | penultimate layer of the project's MNIST CNN, 128 | path          |

Weights are only ever read from local files; nothing is downloaded.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from autoguide.data.images import quantize
from autoguide.io.digest import file_sha256


class FeatureExtractor(ABC):
    """``extractor(images_uint8 [N, C, H, W] on its device) -> features [N, dim] (float32)``."""

    name: str

    def __init__(self, weights_file: Path, device: torch.device) -> None:
        self.weights_file = Path(weights_file)
        self.device = torch.device(device)

    @property
    def sha256(self) -> str:
        """SHA-256 of the weights file (the identity of this extractor)."""
        return file_sha256(self.weights_file)

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def require_file(path: str | os.PathLike, what: str, how: str) -> Path:
    """``path`` as a Path if it is a file; otherwise ``FileNotFoundError`` saying what to put there."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}; {how}")
    return path


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images ``[N, C, H, W]`` in [-1, 1] -> uint8 ``[N, C, H, W]`` (the project's rounding,
    ``autoguide.data.images.quantize``)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"feature extractors take images [N, 1 or 3, H, W], got shape {list(images.shape)}")
    return quantize(images)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Repeat the channel of grayscale images ``[N, 1, H, W]`` to 3; RGB passes through."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got shape {list(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@torch.no_grad()
def extract(extractor: FeatureExtractor, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Features ``[N, dim]`` (float32) of uint8 image batches, concatenated in order."""
    parts = [extractor(batch.to(extractor.device)).to(torch.float32).cpu().numpy() for batch in batches]
    if not parts:
        raise ValueError(f"no images to extract {extractor.name} features from")
    return np.concatenate(parts)
