"""Image datasets from a folder of PNG/JPEG files or from an ``.npz`` archive.

Both return ``(image, label)`` with the image a float32 CHW tensor in [-1, 1] (see
``images.uint8_to_float``) and the label an int (0 when the data has no labels, in which case
``label_dim`` is 0). ``read_uint8(i)`` gives the stored uint8 HWC pixels instead (used by the
shard converter). All images of a dataset must share one shape; errors name the file or key.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from autoguide.data.images import CHANNELS, ImageHeader, check_square, decode_image, read_header, uint8_to_float

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class _Uint8ImageDataset(Dataset, abc.ABC):
    """Shared ``__getitem__``/shape attributes over ``read_uint8``; subclasses set
    ``shape`` (H, W, C; ``None`` for a folder of images of different sizes), ``labels`` (int64
    array) and ``label_dim``."""

    shape: tuple[int, int, int] | None
    labels: np.ndarray
    label_dim: int

    @abc.abstractmethod
    def read_uint8(self, index: int) -> tuple[np.ndarray, int]:
        """The stored pixels (uint8 HWC) and the label of item ``index``."""

    @property
    def img_channels(self) -> int:
        return self.shared_shape[2]

    @property
    def img_resolution(self) -> int:
        return self.shared_shape[0]

    @property
    def shared_shape(self) -> tuple[int, int, int]:
        """``shape``; a ``ValueError`` when the images differ in size."""
        if self.shape is None:
            raise ValueError(f"{type(self).__name__}: the images differ in size; they share no shape")
        return self.shape

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, label = self.read_uint8(index)
        return uint8_to_float(pixels), label


def _labels_from_json(path: Path, files: list[str]) -> np.ndarray:
    """Labels of ``files`` from a JSON object ``{"relative/path.png": int, ...}``."""
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the labels JSON: {error}") from error
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image path -> integer label")
    labels = []
    for name in files:
        if name not in table:
            raise ValueError(f"{path}: no label for image {name!r}")
        value = table[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{path}: label of {name!r} must be an integer >= 0, got {value!r}")
        labels.append(value)
    return np.array(labels, dtype=np.int64)


class ImageFolderDataset(_Uint8ImageDataset):
    """PNG/JPEG images under ``root`` (searched recursively, sorted by relative path).

    Labels: from ``labels_json`` (a JSON object mapping each image's path relative to ``root``,
    with ``/`` separators, to an integer) if given; otherwise, if the images sit in
    subfolders of ``root``, the sorted names of the first-level subfolders are the classes
    0, 1, ...; images directly in ``root`` then are an error. Without either, the data is
    unlabeled (``label_dim = 0``). Image headers are checked up front: one shared size and
    mode (L or RGB). ``same_size=False`` (sources of preprocessing, e.g. ImageNet for
    ``autoguide-encode``) skips that pass: images may differ in size (``shape`` is None) and
    each is checked when read. ``convert_rgb``: every image is read as RGB (``decode_image``).
    """

    def __init__(
        self, root: str | Path, labels_json: str | Path | None = None, same_size: bool = True, convert_rgb: bool = False
    ) -> None:
        self.root = Path(root)
        self.convert_rgb = convert_rgb
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image folder not found")
        self.files = sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise ValueError(f"{self.root}: no {'/'.join(IMAGE_SUFFIXES)} images found")
        self.shape = None
        if same_size:
            self.shape = self._check_headers()
            check_square(self.shape, str(self.root / self.files[0]))
        if labels_json is not None:
            self.labels = _labels_from_json(Path(labels_json), self.files)
            self.label_dim = int(self.labels.max()) + 1
        elif any("/" in name for name in self.files):
            self.class_names = sorted({name.split("/")[0] for name in self.files if "/" in name})
            loose = [name for name in self.files if "/" not in name]
            if loose:
                raise ValueError(
                    f"{self.root / loose[0]}: image outside the class subfolders "
                    f"{self.class_names}; move it into one or pass a labels JSON"
                )
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = np.array([index[n.split("/")[0]] for n in self.files], dtype=np.int64)
            self.label_dim = len(self.class_names)
        else:
            self.labels = np.zeros(len(self.files), dtype=np.int64)
            self.label_dim = 0

    def _check_headers(self) -> tuple[int, int, int]:
        """(H, W, C) shared by all images; reads headers only."""
        shape = None
        for name in self.files:
            with Image.open(self.root / name) as image:
                mode = "RGB" if image.mode == "P" or self.convert_rgb else image.mode
                if mode not in ("L", "RGB"):
                    raise ValueError(
                        f"{self.root / name}: image mode {image.mode!r} is not supported; "
                        "expected 'L' (grayscale) or 'RGB'"
                    )
                this = (image.height, image.width, 1 if mode == "L" else 3)
            if shape is None:
                shape = this
            elif this != shape:
                raise ValueError(
                    f"{self.root / name}: image shape (H, W, C) {this} differs from "
                    f"{shape} of {self.root / self.files[0]}"
                )
        if shape is None:
            raise ValueError(f"{self.root}: no images to read headers from")
        return shape

    def where(self, index: int) -> str:
        """The file of item ``index`` (for error messages)."""
        return str(self.root / self.files[index])

    def read_uint8(self, index: int) -> tuple[np.ndarray, int]:
        path = self.root / self.files[index]
        return decode_image(str(path), str(path), self.convert_rgb), int(self.labels[index])

    def header(self, index: int) -> ImageHeader:
        """The header of image ``index`` (``images.read_header``: format, mode, size; a truncated
        file is an error naming it)."""
        return read_header(self.where(index), self.where(index))


class NpzDataset(_Uint8ImageDataset):
    """Images from an ``.npz`` archive: key ``images`` uint8 [N, H, W, C] or [N, C, H, W]
    (C in {1, 3}) and optional key ``labels`` integer [N] (>= 0).

    ``layout`` ("NHWC" or "NCHW") is guessed from which axis has 1 or 3 entries when not
    given; an ambiguous shape asks for it. The archive is loaded without pickle.
    """

    def __init__(self, path: str | Path, layout: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: npz file not found")
        with np.load(self.path, allow_pickle=False) as archive:
            if "images" not in archive:
                raise ValueError(f"{self.path}: missing key 'images' (found {sorted(archive)})")
            images = archive["images"]
            labels = archive.get("labels")
        self.images = self._to_nhwc(images, layout)
        self.shape = tuple(self.images.shape[1:])
        check_square(self.shape, f"{self.path}['images']")
        if labels is None:
            self.labels = np.zeros(len(self.images), dtype=np.int64)
            self.label_dim = 0
        else:
            self.labels = self._check_labels(labels, len(self.images))
            self.label_dim = int(self.labels.max()) + 1 if len(self.labels) else 0

    def _to_nhwc(self, images: np.ndarray, layout: str | None) -> np.ndarray:
        where = f"{self.path}['images']"
        if images.dtype != np.uint8:
            raise ValueError(f"{where}: expected dtype uint8, got {images.dtype}")
        if images.ndim != 4:
            raise ValueError(f"{where}: expected 4 dimensions [N, H, W, C] or [N, C, H, W], got shape {images.shape}")
        if layout is None:
            last, first = images.shape[3] in CHANNELS, images.shape[1] in CHANNELS
            if not (last or first):
                raise ValueError(
                    f"{where}: shape {images.shape} has no channel axis of size {CHANNELS} "
                    "at position 3 (NHWC) or 1 (NCHW)"
                )
            if last and first:
                raise ValueError(
                    f"{where}: cannot tell NHWC from NCHW for shape {images.shape}; pass layout='NHWC' or layout='NCHW'"
                )
            layout = "NHWC" if last else "NCHW"
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"{where}: layout must be 'NHWC' or 'NCHW', got {layout!r}")
        nhwc = images if layout == "NHWC" else images.transpose(0, 2, 3, 1)
        if nhwc.shape[3] not in CHANNELS:
            raise ValueError(
                f"{where}: {layout} shape {images.shape} has {nhwc.shape[3]} channels; expected one of {CHANNELS}"
            )
        return np.ascontiguousarray(nhwc)

    def _check_labels(self, labels: np.ndarray, n: int) -> np.ndarray:
        where = f"{self.path}['labels']"
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{where}: expected an integer dtype, got {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(f"{where}: expected shape ({n},) to match 'images', got {labels.shape}")
        if n and labels.min() < 0:
            raise ValueError(f"{where}: labels must be >= 0, found {labels.min()}")
        return labels.astype(np.int64)

    def where(self, index: int) -> str:
        """Item ``index`` of the archive (for error messages)."""
        return f"{self.path}['images'][{index}]"

    def read_uint8(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def header(self, index: int) -> ImageHeader:
        """Image ``index`` described like a file header (format ``npz``, mode ``L`` or ``RGB``)."""
        height, width, channels = self.shared_shape
        return ImageHeader("npz", "L" if channels == 1 else "RGB", height, width)
