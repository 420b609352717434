"""Image decoding for Ray workers: bytes or a file -> RGB -> timm's eval geometry, as uint8.

The geometry is exactly timm's eval transform (``timm.data.create_transform`` with the model's
``resolve_model_data_config``, default ``crop_mode="center"``): torchvision ``Resize(resize)`` on
the short side, then ``CenterCrop(size)``, both on the PIL image, where the caller passes
``resize = floor(size / crop_pct)``. Only ToTensor and Normalize are left to the model side, so
``decode_image(...) / 255`` normalised equals timm's tensor.

Resize and crop call PIL exactly as torchvision's functional API does on PIL images (the same
output-size and offset arithmetic), so the decode workers never import torch (seconds of start-up
per worker on a small machine); a crop larger than the resized image (``crop_pct`` > 1), which
torchvision pads, is delegated to torchvision itself.

Colour follows timm's loader (``Image.open(f).convert("RGB")``) with one fix: 16- and 32-bit
integer greyscale (modes ``I;16*``, ``I``), which PIL's convert saturates at 255, is scaled to
8 bits as ``round(v / 257)`` (65535 -> 255; values outside 0..65535 clipped first), and float
greyscale (``F``) is rounded and clipped to 0..255. EXIF orientation is not applied (as timm).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from whichmodel.core.errors import ImageDecodeError

__all__ = ["ImageDecodeError"]  # re-exported: raised here, defined with the other errors

_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, as timm's loader would, with 16-bit greyscale scaled to 8 bits."""
    if img.mode in _WIDE_GREY:
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        img = Image.fromarray(np.round(grey).astype(np.uint8))
    elif img.mode == "F":
        grey = np.clip(np.round(np.asarray(img, dtype=np.float64)), 0, 255)
        img = Image.fromarray(grey.astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(data: bytes | None, path: str | None, where: str = "") -> Image.Image:
    """The fully loaded PIL image from ``data`` (or the file at ``path``); ImageDecodeError
    naming ``where`` (default: the path) when it is empty, unreadable or not an image."""
    where = where or path or "image bytes"
    try:
        if data is None:
            if path is None:
                raise ImageDecodeError(f"{where}: no image bytes and no path")
            data = Path(path).read_bytes()
        if len(data) == 0:
            raise ImageDecodeError(f"{where}: empty (zero-byte) image")
        img = Image.open(io.BytesIO(data))
        img.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:  # its text names a BytesIO object: say it plainly
        raise ImageDecodeError(f"{where}: cannot decode image (not a known image format)") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        message = " ".join(str(exc).split())
        raise ImageDecodeError(
            f"{where}: cannot decode image ({type(exc).__name__}: {message})"
        ) from exc
    return img


def decode_image(
    data: bytes | None,
    path: str | None,
    size: int,
    resize: int,
    interpolation: str = "bicubic",
    where: str = "",
) -> np.ndarray:
    """Decode one image to uint8 (size, size, 3): RGB, short side resized to ``resize``
    (torchvision, antialiased), centre-cropped to ``size``."""
    return crop_pixels(open_image(data, path, where), size, resize, interpolation)


def crop_pixels(img: Image.Image, size: int, resize: int, interpolation: str) -> np.ndarray:
    """The one geometry of every decoder here: ``img`` as RGB, short side resized to ``resize``,
    centre-cropped to ``size``; uint8 (size, size, 3)."""
    img = resize_short_side(to_rgb(img), resize, interpolation)
    return np.array(center_crop(img, size), dtype=np.uint8)


_PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
    "lanczos": Image.LANCZOS,
}


def resize_short_side(img: Image.Image, resize: int, interpolation: str) -> Image.Image:
    """torchvision ``F.resize(img, resize, interpolation)`` on a PIL image: the short side becomes
    ``resize``, the long side ``int(resize * long / short)``."""
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; one of {sorted(_PIL_FILTERS)}")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _PIL_FILTERS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``F.center_crop(img, size)`` on a PIL image."""
    w, h = img.size
    if size > w or size > h:  # torchvision pads with zeros first: let it do that rare case
        from torchvision.transforms import functional as F

        return F.center_crop(img, size)
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def decode_batch(
    batch: dict[str, np.ndarray],
    size: int,
    resize: int,
    interpolation: str,
    task: str | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` (numpy format): decode ``image`` bytes or ``path`` files into
    ``pixels`` (uint8 N x size x size x 3); other columns (label, split, index) pass through.

    A row is read from its ``path`` when the batch has one for it (non-empty), else from its
    ``image`` bytes; its task name comes from a ``task`` column if present, else ``task``.
    """
    n = len(batch["index"])
    pixels = np.empty((n, size, size, 3), np.uint8)
    paths = batch.get("path")
    images = batch.get("image")
    tasks = batch.get("task")
    for i in range(n):
        name = str(tasks[i]) if tasks is not None else task
        path = paths[i] if paths is not None else None
        if path:
            where = f"{path} (task {name!r})"
            pixels[i] = decode_image(None, str(path), size, resize, interpolation, where)
        else:
            value = images[i] if images is not None else None
            data = b"" if value is None else bytes(value)
            where = f"task {name!r} index {int(batch['index'][i])}"
            pixels[i] = decode_image(data, None, size, resize, interpolation, where)
    out = {k: v for k, v in batch.items() if k not in ("image", "path")}
    out["pixels"] = pixels
    return out
