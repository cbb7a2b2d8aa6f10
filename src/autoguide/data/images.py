"""Pixel conventions shared by every image dataset.

Stored images are uint8 HWC arrays (H, W, C with C in {1, 3}); models see float CHW tensors in
[-1, 1] (EDM convention): ``x = u / 127.5 - 1`` and back ``u = round((x + 1) * 127.5)`` clipped
to [0, 255]. The two maps are exact inverses on uint8 values.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CHANNELS = (1, 3)
"""Channel counts an image may have (grayscale, RGB)."""

END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
"""The bytes a complete file of each format ends with (JPEG's EOI marker, PNG's IEND chunk)."""

CONVERT_RGB_HINT = "encode with --convert-rgb (PIL's convert('RGB'), as EDM2's dataset tool does)"


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
            decoded = image.convert("RGB") if image.mode == "P" or (convert_rgb and image.mode != "RGB") else image
            if decoded.mode not in ("L", "RGB"):
                raise ValueError(
                    f"{where}: image mode {decoded.mode!r} is not supported; expected 'L' "
                    f"(grayscale) or 'RGB' (to make it RGB: {CONVERT_RGB_HINT})"
                )
            array = np.array(decoded, dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"{where}: cannot decode image: {error}") from error
    return check_uint8_hwc(array, where)


@dataclass(frozen=True)
class ImageHeader:
    """What an image says about itself without its pixels: PIL's ``format`` (``JPEG``, ``PNG``,
    ``npz`` for arrays), ``mode`` (``L``, ``RGB``, ``CMYK``, ...), ``height``, ``width``."""

    format: str
    mode: str
    height: int
    width: int


def _tail(data: bytes | str, size: int) -> bytes:
    if isinstance(data, bytes):
        return data[-size:]
    with open(data, "rb") as stream:
        stream.seek(0, io.SEEK_END)
        stream.seek(max(stream.tell() - size, 0))
        return stream.read()


def read_header(data: bytes | str, where: str) -> ImageHeader:
    """The header of PNG/JPEG bytes or a file, read without decoding the pixels. A JPEG or PNG
    that does not end with its end marker (``END_MARKERS``) is decoded in full, which tells a
    truncated file (an error) from one with trailing bytes; other formats are always decoded.
    An unreadable image is a ``ValueError`` naming ``where``."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{where}: cannot read the image: {error}") from error
    with image:
        header = ImageHeader(str(image.format), image.mode, image.height, image.width)
        marker = END_MARKERS.get(header.format)
        if marker is None or _tail(data, len(marker)) != marker:
            try:
                image.load()
            except (OSError, SyntaxError) as error:
                raise ValueError(f"{where}: the image data is truncated or broken: {error}") from error
    return header


def check_square(shape: tuple[int, ...], where: str) -> None:
    """Refuse non-square images (shape H, W, C): the networks take ``img_resolution`` x
    ``img_resolution`` inputs."""
    if shape[0] != shape[1]:
        raise ValueError(f"{where}: images are {shape[0]}x{shape[1]} (HxW); square images are required")


def adm_center_crop(pixels: np.ndarray, resolution: int, where: str) -> np.ndarray:
    """ADM's (Dhariwal & Nichol 2021) ImageNet preprocessing, as EDM2's dataset tool does it
    for ImageNet-512 (``docs/design.md``, "Latent space"): while the short side is at least
    ``2 * resolution`` halve the image with a BOX filter (``size // 2`` per side), then resize
    with BICUBIC so the short side is ``resolution`` (each side ``round(side * resolution /
    short side)``: this shrinks larger images and enlarges smaller ones, e.g. ImageNet's typical
    500x375), then cut the central ``resolution`` x ``resolution`` square at
    ``((H - resolution) // 2, (W - resolution) // 2)``. Input and output are uint8 HWC RGB.

    An image that is not RGB is an error naming ``where``.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        raise ValueError(
            f"{where}: the image has {channels} channel(s), not RGB; convert it to RGB first "
            "(or encode with --convert-rgb, as EDM2's dataset tool does)"
        )
    image = Image.fromarray(pixels)
    while min(image.size) >= 2 * resolution:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - resolution) // 2, (array.shape[1] - resolution) // 2
    return np.ascontiguousarray(array[top : top + resolution, left : left + resolution])
