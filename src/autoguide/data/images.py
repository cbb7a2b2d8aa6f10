"""Pixel conventions shared by every image dataset.

Stored images are uint8 HWC arrays (H, W, C with C in {1, 3}); models see float CHW tensors in
[-1, 1] (EDM convention): ``x = u / 127.5 - 1`` and back ``u = round((x + 1) * 127.5)`` clipped
to [0, 255]. The two maps are exact inverses on uint8 values.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

CHANNELS = (1, 3)
"""Channel counts an image may have (grayscale, RGB)."""


def check_uint8_hwc(array: np.ndarray, where: str) -> np.ndarray:
    """Return ``array`` as uint8 HWC; a 2-D array is taken as one grayscale channel.

    ``where`` names the file/key in the error message.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 pixels, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in CHANNELS:
        raise ValueError(
            f"{where}: expected an image of shape [H, W] or [H, W, C] with C in {CHANNELS}, "
            f"got shape {tuple(array.shape)}"
        )
    return array


def uint8_to_float(array: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float32 CHW tensor in [-1, 1]: ``x = u / 127.5 - 1``."""
    chw = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return chw.to(torch.float32) / 127.5 - 1


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] -> uint8 (same shape and layout, on the CPU):
    ``u = clip(round((x + 1) * 127.5), 0, 255)``, the one rounding rule of the project."""
    u = torch.round((images.detach().to(torch.float32).cpu() + 1) * 127.5).clamp(0, 255)
    return u.to(torch.uint8)


def float_to_uint8(image: torch.Tensor) -> np.ndarray:
    """float CHW tensor in [-1, 1] -> uint8 HWC array (``quantize``)."""
    if image.ndim != 3:
        raise ValueError(f"expected a CHW image tensor, got shape {tuple(image.shape)}")
    return quantize(image).permute(1, 2, 0).numpy()


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 HWC image (mode L for 1 channel, RGB for 3)."""
    array = check_uint8_hwc(array, "encode_png")
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes | str, where: str, convert_rgb: bool = False) -> np.ndarray:
    """Decode PNG/JPEG bytes or a file path to uint8 HWC.

    Grayscale (L) stays 1 channel; RGB stays 3 channels; other modes are refused with an error
    naming ``where`` (palette images are converted to RGB, 16-bit or alpha images are refused).
    ``convert_rgb``: every image becomes RGB (PIL's ``convert("RGB")``, what EDM2's dataset tool
    does with ImageNet's few grayscale and CMYK JPEGs).
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            if image.mode == "P" or (convert_rgb and image.mode != "RGB"):
                image = image.convert("RGB")
            if image.mode not in ("L", "RGB"):
                raise ValueError(
                    f"{where}: image mode {image.mode!r} is not supported; expected 'L' "
                    "(grayscale) or 'RGB'"
                )
            array = np.array(image, dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"{where}: cannot decode image: {error}") from error
    return check_uint8_hwc(array, where)


def check_square(shape: tuple[int, ...], where: str) -> None:
    """Refuse non-square images (shape H, W, C): the networks take ``img_resolution`` x
    ``img_resolution`` inputs."""
    if shape[0] != shape[1]:
        raise ValueError(
            f"{where}: images are {shape[0]}x{shape[1]} (HxW); square images are required"
        )


def adm_center_crop(pixels: np.ndarray, resolution: int, where: str) -> np.ndarray:
    """ADM's (Dhariwal & Nichol 2021) ImageNet preprocessing, as EDM2's dataset tool does it
    for ImageNet-512: while the short side is at least ``2 * resolution`` halve the image with
    a BOX filter, then resize with BICUBIC so the short side is ``resolution``, then cut the
    central ``resolution`` x ``resolution`` square. Input and output are uint8 HWC RGB.

    An image that is not RGB or whose short side is below ``resolution`` (it would have to be
    enlarged) is an error naming ``where``.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        raise ValueError(
            f"{where}: the image has {channels} channel(s), not RGB; convert it to RGB first "
            "(or encode with --convert-rgb, as EDM2's dataset tool does)"
        )
    height, width = pixels.shape[:2]
    if min(height, width) < resolution:
        raise ValueError(f"{where}: the image is {height}x{width} (HxW), smaller than the {resolution}x{resolution} crop")
    image = Image.fromarray(pixels)
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - resolution) // 2, (array.shape[1] - resolution) // 2
    return np.ascontiguousarray(array[top : top + resolution, left : left + resolution])
