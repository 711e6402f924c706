"""Image decoding helpers shared by the dataset readers."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaticket.errors import MetaticketError

# The most pixels an image of a data set may declare: 16.7 M (4096 x 4096) is far beyond any file of the supported
# data sets (ImageNet's largest are about 10 M); PIL's own guard only warns below 89 M and errors at 179 M.
MAX_PIXELS = 4096 * 4096


def open_image(raw: bytes | str | Path, name: str, mode: str) -> Image.Image:
    """Decode image bytes (or a file) into a loaded PIL image of ``mode``; a file that is not an image, is
    truncated, or declares more than :data:`MAX_PIXELS` pixels (a decompression bomb) is one error naming ``name``
    (``archive: member`` or the file)."""
    bomb = (f"beyond the {MAX_PIXELS:,} an image of a data set may have (a decompression bomb?); remove it or "
            f"download the data set again")
    try:
        with warnings.catch_warnings():  # PIL warns past 89 M pixels; the check below refuses far earlier
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw)
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise MetaticketError(f"{name} declares {width} x {height} pixels, {bomb}")
        return img.convert(mode)
    except Image.DecompressionBombError:
        raise MetaticketError(f"{name} declares more pixels than PIL opens, {bomb}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MetaticketError(f"{name} is not a readable image ({type(e).__name__}: {str(e)[:120]}); the data set is "
                              f"damaged, download it again") from None


def decode_rgb(raw: bytes, size: int, name: str) -> Tensor:
    """JPEG/PNG bytes -> uint8 [3, size, size] (bilinear resize only when the size differs)."""
    img = open_image(raw, name, "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """uint8 [..., C, H, W] -> uint8 [..., C, size, size] with antialiased bilinear resizing."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:]).float()
    out = torch.nn.functional.interpolate(flat, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*lead, images.shape[-3], size, size)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
