"""Inception-v3 pool3 features (2048) as used by FID (Heusel et al. 2017), through
torch-fidelity's port of the TensorFlow graph ``inception-2015-12-05``
(``FeatureExtractorInceptionV3``: TF-compatible bilinear resize to 299x299, ``(x - 128) / 128``),
the graph EDM2 measures FID with. torch-fidelity states that its values match the reference
implementations up to floating-point precision (its README, "Numerical precision").

Weights come from a LOCAL file only: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
(a plain state dict). torch-fidelity reads it with ``torch.load``; it is constructed here with
``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` so the file is read by PyTorch's weights-only unpickler,
never by a general one. torch-fidelity is an optional dependency: it needs a torchvision that
matches the installed torch, and both are installed without dependencies so the torch
installation stays untouched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from autoguide.eval.features import FeatureExtractor, as_rgb, require_file

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"
TORCH_FIDELITY_VERSION = "0.4.0"


def install_line(torch_version: str = torch.__version__, cuda: str | None = torch.version.cuda) -> str:
    """The pip command that installs torch-fidelity and the torchvision built for this torch (torch
    ``2.M.P`` pairs with torchvision ``0.(M+15).P``), without dependencies so torch stays as it is."""
    major, minor, patch = (int(part) for part in torch_version.split("+")[0].split(".")[:3])
    vision = f"0.{minor + 15}.{patch}" if major == 2 else "<the torchvision release of your torch>"
    index = "cpu" if cuda is None else "cu" + cuda.replace(".", "")
    return (
        f"pip install --no-deps torch-fidelity=={TORCH_FIDELITY_VERSION} torchvision=={vision} "
        f"--extra-index-url https://download.pytorch.org/whl/{index}"
    )


def inception_problem() -> str | None:
    """None if torch-fidelity's Inception port imports here (it needs torchvision and its compiled
    operators, built for this torch); else what failed and the install line."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import (
            FeatureExtractorInceptionV3,  # noqa: F401
        )
    except Exception as err:
        why = f"{type(err).__name__}: {err}"
        return f"torch-fidelity's Inception-v3 does not import ({why}); install it with `{install_line()}`"
    return None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block every ``torch.load`` uses the weights-only unpickler (PyTorch's
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), whatever its caller asked for."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[key]
        else:
            os.environ[key] = previous


class InceptionFeatures(FeatureExtractor):
    """Pool3 features ``[N, 2048]`` of uint8 images ``[N, 1 or 3, H, W]`` (gray repeated to RGB)."""

    name = "inception"
    dim = 2048

    def __init__(self, weights: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        weights = require_file(
            weights,
            "Inception-v3 weights",
            f"download {WEIGHTS_URL} on a machine with internet access and copy it there, or set "
            "extractors.inception.weights=<file> (it is never downloaded at run time)",
        )
        super().__init__(weights, torch.device(device))
        problem = inception_problem()
        if problem is not None:
            raise ImportError(problem)
        from torch_fidelity.feature_extractor_inceptionv3 import (
            FeatureExtractorInceptionV3,
        )

        with weights_only_loads():
            net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
            )
        self.net = net.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"Inception features need uint8 images, got {images.dtype}")
        (features,) = self.net(as_rgb(images).contiguous())
        return features
