"""An in-project feature network for MNIST-5k: a small CNN digit classifier whose penultimate
layer gives the features of FD_MNIST and precision/recall, so both work offline.

Architecture (``MnistClassifier``): three 3x3 convolutions with stride 2, each + ReLU
(16, 32, 64 channels; 32x32 -> 4x4), a linear layer to ``feature_dim`` = 128 + ReLU (the
features), dropout, and a linear layer to the 10 logits. Input: grayscale ``[N, 1, 32, 32]`` in [-1, 1].

Training (``train``): cross-entropy with Adam and a cosine learning-rate decay on the MNIST-5k
"train" split (4,500 images), each batch shifted at random by up to ``shift`` pixels; the
"test" split (500 images, never seen in training) gives the reported accuracy.

The file is a safetensors file; its card (JSON in the metadata under
``autoguide.mnist_classifier``) holds the architecture, the training settings and the test
accuracy. Written atomically.

    autoguide-mnist-classifier train --out ~/.cache/autoguide/mnist-classifier.safetensors
    autoguide-mnist-classifier test ~/.cache/autoguide/mnist-classifier.safetensors
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from autoguide.data.mnist import NUM_CLASSES, RESOLUTION, MNIST5k
from autoguide.eval.features import FeatureExtractor, require_file
from autoguide.io import atomic_path

CARD_KEY = "autoguide.mnist_classifier"
FORMAT = "autoguide-mnist-classifier/1"
TRAIN_COMMAND = "autoguide-mnist-classifier train --out {path}"


class MnistClassifier(nn.Module):
    """Small CNN: ``features(x) [N, feature_dim]`` (penultimate layer) and ``forward(x)`` logits."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), feature_dim: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        self.arch = {"channels": list(channels), "feature_dim": feature_dim, "dropout": dropout}
        layers: list[nn.Module] = []
        width, size = 1, RESOLUTION
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.ReLU()]
            width, size = out, size // 2
        layers += [nn.Flatten(), nn.Linear(width * size * size, feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def random_shift(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image ``[N, 1, H, W]`` by its own integer offset in ``[-shift, shift]^2``;
    uncovered pixels take the background value -1."""
    if shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift), value=-1.0)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n, 1), generator=generator).to(images.device)
    rows = (torch.arange(h, device=images.device) + dy)[:, :, None]
    cols = (torch.arange(w, device=images.device) + dx)[:, None, :]
    return padded[torch.arange(n, device=images.device)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def accuracy(net: MnistClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of ``images`` whose arg-max logit is the label (eval mode)."""
    net.eval()
    hits = sum(
        int((net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    return hits / len(images)


def train(
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 1e-3,
    shift: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[MnistClassifier, dict[str, Any]]:
    """Train on the MNIST-5k train split; returns the network (eval mode, CPU) and its card."""
    device = torch.device(device)
    train_set, test_set = MNIST5k("train"), MNIST5k("test")
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    generator = torch.Generator().manual_seed(seed)  # batches and shifts
    started = time.time()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # initial weights and dropout, without touching the caller's RNG
        net = MnistClassifier().to(device).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            index = torch.randint(0, len(images), (batch_size,), generator=generator).to(device)
            loss = F.cross_entropy(net(random_shift(images[index], shift, generator)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    test_accuracy = accuracy(net, test_set.images.to(device), test_set.labels.to(device))
    card = {
        "format": FORMAT,
        "arch": net.arch,
        "test_accuracy": test_accuracy,
        "test_images": len(test_set),
        "train": {
            "data": f"mnist5k train split ({len(train_set)} images)",
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "shift": shift,
            "seed": seed,
            "seconds": round(time.time() - started, 1),
            "final_loss": float(loss.detach()),
        },
    }
    return net.cpu().eval(), card


def save_classifier(path: str | os.PathLike, net: MnistClassifier, card: dict[str, Any]) -> None:
    """Weights + card (safetensors metadata), written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CARD_KEY: json.dumps(card)})


def load_classifier(path: str | os.PathLike) -> tuple[MnistClassifier, dict[str, Any]]:
    """``(net in eval mode, card)``; errors name the file and say how to make one."""
    path = require_file(path, "MNIST feature classifier", f"train it with `{TRAIN_COMMAND.format(path=path)}`")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    card = json.loads(metadata.get(CARD_KEY, "null")) or {}
    if card.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not an MNIST feature classifier (card format {card.get('format')!r}, expected {FORMAT!r})"
        )
    net = MnistClassifier(**card["arch"])
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False), card


class MnistFeatures(FeatureExtractor):
    """Penultimate-layer features of the MNIST classifier for uint8 images ``[N, 1 or 3, 32, 32]``
    (3-channel images are averaged to gray)."""

    name = "mnist"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        net, self.card = load_classifier(path)
        super().__init__(Path(path).expanduser(), torch.device(device))
        self.dim = int(self.card["arch"]["feature_dim"])
        self.net = net.to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2:] != (RESOLUTION, RESOLUTION):
            raise ValueError(
                f"MNIST features need images [N, 1 or 3, {RESOLUTION}, {RESOLUTION}], got {list(images.shape)}"
            )
        x = images.to(torch.float32).mean(1, keepdim=True) / 127.5 - 1
        return self.net.features(x)
