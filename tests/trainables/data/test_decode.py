"""read_image: JPEGs through torchvision.io, everything else (and what it refuses) through PIL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from trainables.data.decode import is_jpeg, read_image, read_image_pil
from trainables.data.transforms import ImageMaskTransform


def pixels(seed: int, height: int = 37, width: int = 53) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture
def decoded_by(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which decoder each read_image call ended in ("torchvision" or "pil")."""
    calls: list[str] = []

    def via_torchvision(data: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append("torchvision")
        out: torch.Tensor = decode_jpeg(data, **kwargs)
        return out

    def via_pil(path: Path) -> torch.Tensor:
        calls.append("pil")
        return read_image_pil(path)

    monkeypatch.setattr("trainables.data.decode.decode_jpeg", via_torchvision)
    monkeypatch.setattr("trainables.data.decode.read_image_pil", via_pil)
    return calls


def test_a_jpeg_is_decoded_by_torchvision_as_uint8_rgb(
    tmp_path: Path, decoded_by: list[str]
) -> None:
    path = tmp_path / "a.jpg"
    Image.fromarray(pixels(0)).save(path, quality=90)
    out = read_image(path)
    assert decoded_by == ["torchvision"]
    assert out.dtype == torch.uint8
    assert out.shape == (3, 37, 53)
    assert int((out.int() - read_image_pil(path).int()).abs().max()) <= 2


def test_grey_jpegs_come_out_with_three_channels(tmp_path: Path) -> None:
    path = tmp_path / "grey.jpg"
    Image.fromarray(pixels(1)[..., 0], mode="L").save(path)
    out = read_image(path)
    assert out.shape == (3, 37, 53)
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[1], out[2])


@pytest.mark.parametrize("name", ["a.png", "png_named.jpg"])
def test_other_formats_go_through_pil_whatever_their_name(
    tmp_path: Path, decoded_by: list[str], name: str
) -> None:
    path = tmp_path / name
    rgba = np.concatenate([pixels(2), np.full((37, 53, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(path, format="PNG")
    out = read_image(path)
    assert decoded_by == ["pil"]
    # PIL's convert("RGB") drops alpha, as the loaders did before.
    assert torch.equal(out, torch.from_numpy(pixels(2)).permute(2, 0, 1))


def test_a_jpeg_torchvision_refuses_falls_back_to_pil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "odd.jpg"
    Image.fromarray(pixels(3)).save(path)

    def refuse(*_: object, **__: object) -> torch.Tensor:
        raise RuntimeError("unsupported colour space")

    monkeypatch.setattr("trainables.data.decode.decode_jpeg", refuse)
    assert torch.equal(read_image(path), read_image_pil(path))


def test_jpeg_is_told_by_its_first_bytes() -> None:
    assert is_jpeg(b"\xff\xd8\xff\xe0rest")
    assert is_jpeg(torch.tensor([0xFF, 0xD8, 0xFF, 0xDB], dtype=torch.uint8))
    assert not is_jpeg(b"\x89PNG\r\n")


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "none.jpg")


@pytest.mark.parametrize("train", [False, True])
def test_the_transform_gives_the_same_output_for_a_tensor_as_for_its_pil_image(
    train: bool,
) -> None:
    array = pixels(4, 40, 60)
    labels = torch.from_numpy(np.random.default_rng(5).integers(0, 21, (40, 60), np.uint8))
    transform = ImageMaskTransform(24, train=train)
    torch.manual_seed(7)
    from_pil = transform(Image.fromarray(array), labels)
    torch.manual_seed(7)
    from_tensor = transform(torch.from_numpy(array).permute(2, 0, 1).contiguous(), labels)
    assert torch.equal(from_pil[0], from_tensor[0])
    assert from_pil[1] is not None
    assert from_tensor[1] is not None
    assert torch.equal(from_pil[1], from_tensor[1])
    assert from_tensor[0].dtype == torch.float32
    assert from_tensor[0].shape == (3, 24, 24)


def test_the_transform_refuses_a_tensor_that_is_no_uint8_rgb_image() -> None:
    transform = ImageMaskTransform(8, train=False)
    message = (
        "image: must be a PIL image or a uint8 tensor [3, H, W], got a torch.float32 tensor "
        "of shape (3, 8, 8)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        transform(torch.zeros(3, 8, 8))
    with pytest.raises(
        ValueError, match=r"label_map: must have the image's shape \(H, W\) = \(8, 9\)"
    ):
        transform(torch.zeros(3, 8, 9, dtype=torch.uint8), torch.zeros(9, 8, dtype=torch.uint8))
