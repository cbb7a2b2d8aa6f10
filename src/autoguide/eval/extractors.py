"""The registry of feature extractors: ``build_extractor(name, files, device)`` builds one from
the ``extractors`` node (``ExtractorFiles``: each network's local files; see
``autoguide.eval.features``).
The extractor modules are imported only when built (Inception needs the optional torch-fidelity).
``check_detectors`` says, before any sampling, which of them can run here and how to install
the packages of one that cannot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from autoguide.core.typed_settings import ConfigError
from autoguide.eval.features import FeatureExtractor

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class InceptionFiles:
    """``extractors.inception``: torch-fidelity's Inception-v3 weights file."""

    weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class DinoV2Files:
    """``extractors.dinov2``: a checkout of the DINOv2 repository and its ViT-L/14 weights."""

    repo: str | None = None
    weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class MnistFiles:
    """``extractors.mnist``: the project's MNIST classifier (``autoguide-mnist-classifier``)."""

    path: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExtractorFiles:
    """The ``extractors`` node: each feature network's local files (never downloaded)."""

    inception: InceptionFiles = field(default_factory=InceptionFiles)
    dinov2: DinoV2Files = field(default_factory=DinoV2Files)
    mnist: MnistFiles = field(default_factory=MnistFiles)


def _build_inception(files: ExtractorFiles, device: torch.device) -> FeatureExtractor:
    from autoguide.eval.inception import InceptionFeatures

    return InceptionFeatures(_given(files.inception.weights, "inception.weights"), device)


def _build_dinov2(files: ExtractorFiles, device: torch.device) -> FeatureExtractor:
    from autoguide.eval.dinov2 import DinoV2Features

    repo, weights = _given(files.dinov2.repo, "dinov2.repo"), _given(files.dinov2.weights, "dinov2.weights")
    return DinoV2Features(repo, weights, device)


def _build_mnist(files: ExtractorFiles, device: torch.device) -> FeatureExtractor:
    from autoguide.eval.mnist_classifier import MnistFeatures

    return MnistFeatures(_given(files.mnist.path, "mnist.path"), device)


def _given(path: str | None, key: str) -> str:
    """``path``, else ``ConfigError`` naming ``extractors.<key>``."""
    if path is None:
        raise ConfigError(f"extractors.{key} is not set; give the network's local file")
    return path


EXTRACTORS: dict[str, Callable[[ExtractorFiles, torch.device], FeatureExtractor]] = {
    "inception": _build_inception,
    "dinov2": _build_dinov2,
    "mnist": _build_mnist,
}


def build_extractor(name: str, files: ExtractorFiles, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The extractor ``name`` from its files in ``files`` (the ``extractors`` node)."""
    if name not in EXTRACTORS:
        raise ConfigError(
            f"metrics.features: feature extractor {name!r} is unknown; expected one of {sorted(EXTRACTORS)}"
        )
    return EXTRACTORS[name](files, torch.device(device))


def _inception_problem() -> str | None:
    from autoguide.eval.inception import inception_problem

    return inception_problem()


# What keeps an extractor's code from running here (None: it can run); weights files are checked when built.
PROBLEMS: dict[str, Callable[[], str | None]] = {"inception": _inception_problem}


def detector_report(names: Sequence[str]) -> dict[str, str | None]:
    """``{name: None if the extractor's packages work here, else why not and the install line}``."""
    return {name: PROBLEMS[name]() if name in PROBLEMS else None for name in names}


def check_detectors(names: Sequence[str]) -> None:
    """Log which of the extractors ``names`` are usable; ``ValueError`` listing the unusable ones with
    their install lines (raised before any model is sampled)."""
    report = detector_report(names)
    for name, problem in report.items():
        log.info("detector %s: %s", name, "usable" if problem is None else f"NOT usable: {problem}")
    unusable = {n: p for n, p in report.items() if p is not None}
    if unusable:
        raise ValueError("; ".join(f"detector {n} is not usable here: {p}" for n, p in unusable.items()))
