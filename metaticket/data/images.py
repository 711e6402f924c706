"""Image decoding helpers shared by the dataset readers."""

from __future__ import annotations

import io

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaticket.errors import MetaticketError


def decode_rgb(raw: bytes, size: int, name: str) -> Tensor:
    """JPEG/PNG bytes -> uint8 [3, size, size] (bilinear resize only when the size differs)."""
    try:
        img = Image.open(io.BytesIO(raw)).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise MetaticketError(f"{name} is not a readable image ({e}); the data set is damaged, "
                              f"download it again") from None
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
