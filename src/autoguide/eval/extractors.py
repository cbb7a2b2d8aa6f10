"""The registry of feature extractors: ``build_extractor(name, cfg, device)`` builds one from
its ``extractors.<name>`` config (each network's local files; see ``autoguide.eval.features``).
The extractor modules are imported only when built (Inception needs the optional torch-fidelity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from autoguide.eval.features import FeatureExtractor


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
    """The extractor ``name`` from its config ``extractors.<name>``."""
    if name not in EXTRACTORS:
        raise ValueError(f"feature extractor {name!r} is unknown; expected one of {sorted(EXTRACTORS)}")
    build, keys = EXTRACTORS[name]
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise ValueError(f"extractors.{name}: missing key(s) {missing}; it needs {list(keys)}")
    return build(cfg, torch.device(device))
