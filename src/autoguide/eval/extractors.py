"""The registry of feature extractors: ``build_extractor(name, cfg, device)`` builds one from
its ``extractors.<name>`` config (each network's local files; see ``autoguide.eval.features``).
The extractor modules are imported only when built (Inception needs the optional torch-fidelity).
``check_detectors`` says, before any sampling, which of them can run here and how to install
the packages of one that cannot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from autoguide.eval.features import FeatureExtractor

log = logging.getLogger(__name__)


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


def _inception_problem() -> str | None:
    from autoguide.eval.inception import inception_problem

    return inception_problem()


# What keeps an extractor's code from running here (None: it can run); weights files are checked when built.
PROBLEMS: dict[str, Callable[[], str | None]] = {"inception": _inception_problem}


def detector_report(names: Sequence[str]) -> dict[str, str | None]:
    """``{name: None if the extractor's packages work here, else why not and the install line}``."""
    return {name: PROBLEMS[name]() if name in PROBLEMS else None for name in names}


def check_detectors(names: Sequence[str], extractors: Mapping[str, Any]) -> None:
    """Log which of the extractors ``names`` are usable; ``ValueError`` listing the unusable ones with
    their install lines (raised before any model is sampled)."""
    report = detector_report(names)
    for name, problem in report.items():
        log.info("detector %s: %s", name, "usable" if problem is None else f"NOT usable: {problem}")
    unusable = {n: p for n, p in report.items() if p is not None}
    if unusable:
        raise ValueError("; ".join(f"detector {n} is not usable here: {p}" for n, p in unusable.items()))
