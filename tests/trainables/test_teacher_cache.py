from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables.data import ShapesDataset
from trainables.loop import LoopConfig, Optimization, train_student
from trainables.matching import MatchingConfig
from trainables.models import build_model, forward_features, forward_head
from trainables.teacher_cache import TeacherCache


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg11_bn", num_classes=10, image_size=32, width_divisor=8).eval()


def test_cache_holds_each_samples_outputs_at_its_index() -> None:
    teacher = _teacher()
    data = ShapesDataset("train", size=20, image_size=32)
    shuffled = DataLoader(data, batch_size=6, shuffle=True)
    cache = TeacherCache.build(teacher, shuffled, size=20, device=torch.device("cpu"))
    assert cache is not None
    index = torch.tensor([7, 0, 19])
    images = torch.stack([data[int(i)]["image"] for i in index])
    with torch.no_grad():
        features = forward_features(teacher, images)
        logits = forward_head(teacher, features)
    cached_features, cached_logits = cache.lookup(index)
    torch.testing.assert_close(cached_features, features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached_logits, logits, rtol=1e-4, atol=1e-5)


def test_cache_refuses_to_grow_past_its_limit_and_needs_every_index() -> None:
    teacher = _teacher()
    data = ShapesDataset("train", size=8, image_size=32)
    loader = DataLoader(data, batch_size=4)
    cpu = torch.device("cpu")
    assert TeacherCache.build(teacher, loader, size=8, device=cpu, max_bytes=1000) is None
    with pytest.raises(ValueError, match=r"must cover every index 0..9, 2 missing"):
        TeacherCache.build(teacher, loader, size=10, device=cpu)


def _train(
    data: ShapesDataset, *, cache: bool, matching: MatchingConfig
) -> tuple[list[float], int]:
    """Per-epoch training losses and how often the teacher's body ran."""
    teacher = _teacher()
    torch.manual_seed(1)
    student = build_model("vgg11_bn", num_classes=10, image_size=32, width_divisor=16)
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    teacher.features.register_forward_hook(count)
    losses: list[float] = []
    train_student(
        copy.deepcopy(student),
        teacher,
        DataLoader(data, batch_size=8, shuffle=True),
        config=LoopConfig(
            epochs=3, optimization=Optimization(lr=0.01), beta=1.0, cache_teacher=cache
        ),
        matching=matching,
        evaluate=lambda model, teacher: {},
        report=lambda epoch, metrics, state: losses.append(metrics["loss"]),
    )
    return losses, calls[0]


@pytest.mark.parametrize(
    "matching", [MatchingConfig(kind="swa"), MatchingConfig(kind="sswa", drop_p=0.3)]
)
def test_training_with_the_cache_matches_training_without_it(matching: MatchingConfig) -> None:
    data = ShapesDataset("train", size=24, image_size=32)
    cached, cached_calls = _train(data, cache=True, matching=matching)
    live, live_calls = _train(data, cache=False, matching=matching)
    assert live_calls == 3 * 3  # three batches a epoch, three epochs
    assert cached_calls == 3  # one pass over the data set, then never again
    assert cached == pytest.approx(live, rel=1e-4)


def test_augmented_data_is_never_cached() -> None:
    data = ShapesDataset("train", size=24, image_size=32, augment=True)
    assert not data.deterministic
    _, calls = _train(data, cache=True, matching=MatchingConfig(kind="swa"))
    assert calls == 3 * 3
