"""Feature extractors for Fréchet distance and precision/recall, and the batch loop around them.

An extractor maps uint8 images ``[N, C, H, W]`` (C = 1 or 3, values 0..255) to feature rows
``[N, D]``. Every extractor is defined by one weights file; its SHA-256 keys the cached
reference statistics, so new weights never meet stale statistics. Registered extractors
(``build_extractor(name, cfg, device)``):

| name      | features                                   | config keys          |
|-----------|--------------------------------------------|----------------------|
| inception | Inception-v3 pool3, 2048 (FID)             | weights              |
| dinov2    | DINOv2 ViT-L/14 class token, 1024 (FD_DINOv2) | repo, weights     |
| mnist     | penultimate layer of the project's MNIST CNN, 128 | path          |

Weights are only ever read from local files; nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoguide.sample.outputs import to_uint8


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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes; remembered per (path, size, mtime)."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: str | os.PathLike, what: str, how: str) -> Path:
    """``path`` as a Path if it is a file; otherwise ``FileNotFoundError`` saying what to put there."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}; {how}")
    return path


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images ``[N, C, H, W]`` in [-1, 1] -> uint8 ``[N, C, H, W]`` with the project's
    rounding ``u = clip(round((x + 1) * 127.5), 0, 255)`` (``autoguide.sample.outputs``)."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).contiguous()


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


def _build_inception(cfg: Mapping[str, Any], device: torch.device) -> FeatureExtractor:
    from autoguide.eval.inception import InceptionFeatures

    return InceptionFeatures(cfg["weights"], device)


def _build_dinov2(cfg: Mapping[str, Any], device: torch.device) -> FeatureExtractor:
    from autoguide.eval.dinov2 import DinoV2Features

    return DinoV2Features(cfg["repo"], cfg["weights"], device)


def _build_mnist(cfg: Mapping[str, Any], device: torch.device) -> FeatureExtractor:
    from autoguide.eval.mnist_classifier import MnistFeatures

    return MnistFeatures(cfg["path"], device)


EXTRACTORS: dict[str, tuple[Callable[[Mapping[str, Any], torch.device], FeatureExtractor], tuple[str, ...]]] = {
    "inception": (_build_inception, ("weights",)),
    "dinov2": (_build_dinov2, ("repo", "weights")),
    "mnist": (_build_mnist, ("path",)),
}


def build_extractor(name: str, cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> FeatureExtractor:
    """The extractor ``name`` (see the table above) from its config ``extractors.<name>``."""
    if name not in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is unknown; expected one of {sorted(EXTRACTORS)}")
    build, keys = EXTRACTORS[name]
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise ValueError(f"extractors.{name}: missing key(s) {missing}; it needs {list(keys)}")
    return build(cfg, torch.device(device))
