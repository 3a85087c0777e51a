"""Image and label-map transforms shared by the file-backed data sets (VOC, image folders).

Training: ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip`` (the paper's
augmentation, Appendix C); evaluation: ``Resize((image_size, image_size))``. Both end with
scaling to [0, 1] and the shared normalisation. The label map rides along as a
``tv_tensors.Mask``, so torchvision applies the very same crop and flip to it with nearest
interpolation: class indices (and VOC's 255 "void") are never blended into new values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainables.data._validation import check_bool, check_float_pair, check_int
from trainables.data.normalization import IMAGE_MEAN, IMAGE_STD

__all__ = ["DEFAULT_CROP_SCALE", "ImageMaskTransform"]

DEFAULT_CROP_SCALE: tuple[float, float] = (0.08, 1.0)
"""torchvision's default area range of RandomResizedCrop (what the paper used)."""


class ImageMaskTransform:
    """Applies one random geometry to an image and, optionally, its integer label map.

    Args:
        image_size: output side length in pixels (square output).
        train: random resized crop + horizontal flip when True, plain resize when False.
        crop_scale: (min, max) fraction of the image area a training crop covers.
    """

    def __init__(
        self,
        image_size: int,
        *,
        train: bool,
        crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
    ) -> None:
        self.image_size = check_int("image_size", image_size, 1)
        self.train = check_bool("train", train)
        scale = check_float_pair("crop_scale", crop_scale, 0.0, 1.0, open_low=True)
        self.crop_scale = scale
        geometry: list[v2.Transform] = (
            [
                v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
            if train
            else [v2.Resize((image_size, image_size), antialias=True)]
        )
        self._pipeline = v2.Compose(
            [
                v2.ToImage(),
                *geometry,
                # A dtype (not a dict) converts images only; the label map keeps its uint8.
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(IMAGE_MEAN), std=list(IMAGE_STD)),
            ]
        )

    def __call__(
        self, image: Image.Image | Tensor, label_map: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Transform an image and its label map with the same geometry.

        Args:
            image: PIL image, any size, converted to RGB; or its pixels as a uint8 Tensor
                [3, H, W] RGB (what :func:`trainables.data.decode.read_image` gives). Both give
                the same output for the same pixels: the pipeline starts by making a uint8
                tensor of a PIL image.
            label_map: integer Tensor [H, W] with the image's height and width (e.g. class
                index per pixel), or None.

        Returns:
            ``image`` float32 [3, S, S] normalised and ``label_map`` [S, S] (same dtype as
            given, nearest-resampled) or None, with ``S = image_size``.
        """
        rgb: Image.Image | tv_tensors.Image
        if isinstance(image, Tensor):
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    "image: must be a PIL image or a uint8 tensor [3, H, W], got a "
                    f"{image.dtype} tensor of shape {tuple(image.shape)}"
                )
            rgb, size = tv_tensors.Image(image), (image.shape[1], image.shape[2])
        else:
            rgb = image.convert("RGB")
            size = (rgb.height, rgb.width)
        if label_map is None:
            out = self._pipeline(rgb)
            return out.as_subclass(Tensor), None
        if tuple(label_map.shape) != size:
            raise ValueError(
                f"label_map: must have the image's shape (H, W) = {size}, "
                f"got {tuple(label_map.shape)}"
            )
        out_image, out_map = self._pipeline(rgb, tv_tensors.Mask(label_map))
        return out_image.as_subclass(Tensor), out_map.as_subclass(Tensor)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, train={self.train}, "
            f"crop_scale={self.crop_scale})"
        )
