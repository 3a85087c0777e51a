"""Image files to pixels for the file-backed data sets: JPEGs through torchvision.io, the rest
through PIL.

:func:`read_image` is what :mod:`trainables.data.voc` and :mod:`trainables.data.imagefolder`
decode with. JPEGs (told by their first bytes, not their name) go through
``torchvision.io.read_file`` + ``decode_jpeg``: libjpeg-turbo straight into a uint8 tensor, with
no PIL image and no copy into a tensor after it. Anything else, and a JPEG that ``decode_jpeg``
refuses (e.g. an unusual colour space), is decoded by PIL and converted to RGB. The result is
the same uint8 [3, H, W] RGB tensor either way, which
:class:`~trainables.data.transforms.ImageMaskTransform` takes as it takes a PIL image. EXIF
orientation is ignored by both paths, as PIL's ``Image.open`` ignores it.

Pixels match PIL's exactly where both decoders are the same libjpeg-turbo build with the same
settings (the case in this project's environment: max abs difference 0 on the generated VOC
tree, ``bench/jpeg_decode.py``); other builds may differ by a few grey levels.
"""

from __future__ import annotations

import os
from typing import Final

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg, read_file

__all__ = ["is_jpeg", "read_image", "read_image_pil"]

#: Every JPEG starts with SOI (FF D8) followed by a marker (FF).
_JPEG_MAGIC: Final = b"\xff\xd8\xff"


def is_jpeg(data: bytes | Tensor) -> bool:
    """Whether encoded bytes (``bytes`` or a uint8 tensor [N]) start like a JPEG file."""
    head = bytes(data[:3].tolist()) if isinstance(data, Tensor) else data[:3]
    return head == _JPEG_MAGIC


def read_image_pil(path: str | os.PathLike[str]) -> Tensor:
    """``path`` decoded by PIL and converted to RGB: uint8 Tensor [3, H, W]."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike[str]) -> Tensor:
    """The image at ``path`` as RGB pixels: uint8 Tensor [3, H, W].

    JPEGs are decoded by ``torchvision.io.decode_jpeg`` (on the CPU), other formats, and JPEGs
    it cannot decode, by PIL.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PIL.UnidentifiedImageError: neither decoder can read the file.
    """
    with open(path, "rb") as file:  # the first bytes pick the decoder; a name can lie
        head = file.read(len(_JPEG_MAGIC))
    if is_jpeg(head):
        try:
            pixels: Tensor = decode_jpeg(read_file(os.fspath(path)), mode=ImageReadMode.RGB)
            return pixels
        except RuntimeError:
            pass  # e.g. a colour space libjpeg-turbo's RGB output does not cover: PIL's turn
    return read_image_pil(path)
