"""The sample contract every data set honours (training loop, evaluation and metrics rely on it).

``dataset[i]`` returns a :class:`Sample` dict:

- ``"image"``: float32 Tensor [3, H, W], normalised with :mod:`trainables.data.normalization`;
  ``H == W == dataset.image_size``.
- ``"labels"``: float32 Tensor [C], multi-hot (single-label data: one-hot); ``C = num_classes``.
- ``"masks"``: bool Tensor [C, H, W], only when ``dataset.has_masks``; channel ``c`` is the
  exact pixel mask of class ``c`` and is all False for classes that are not labelled.
- ``"index"``: int, the ``i`` that was asked for (so per-sample results can be traced back).

All sizes are fixed per data set, so torch's default collate stacks a batch into
``image`` [B, 3, H, W], ``labels`` [B, C], ``masks`` [B, C, H, W] and ``index`` [B] (int64).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypedDict

from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "Sample"]


class _RequiredSample(TypedDict):
    image: Tensor
    labels: Tensor
    index: int


class Sample(_RequiredSample, total=False):
    """One item of a data set; ``masks`` is present only when the data set has masks."""

    masks: Tensor


class ImageDataset(Dataset[Sample], ABC):
    """What the training loop, evaluation and metrics may assume about any data set.

    A nominal base (not a Protocol) so that one type is both a ``torch`` ``Dataset`` (what
    ``DataLoader`` is typed to take) and carries the attributes below.
    """

    @property
    @abstractmethod
    def classes(self) -> tuple[str, ...]:
        """Class names; position ``c`` names ``labels[c]`` and ``masks[c]``."""

    @property
    def num_classes(self) -> int:
        """``len(classes)``."""
        return len(self.classes)

    @property
    @abstractmethod
    def multi_label(self) -> bool:
        """True when an image may carry several positive labels (sigmoid/BCE), else softmax."""

    @property
    @abstractmethod
    def has_masks(self) -> bool:
        """True when every sample carries ``"masks"``."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side length of the square images in pixels."""

    @property
    def deterministic(self) -> bool:
        """True when ``self[i]`` is the same every time (no random augmentation).

        Lets the training loop cache a frozen teacher's outputs per sample; False (the safe
        answer) unless a data set knows better.
        """
        return False

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...
