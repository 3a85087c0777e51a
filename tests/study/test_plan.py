"""plan_study: the trial and teacher setups and the class count, built once from a spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from study.plan import plan_study, trial_setup
from study.spec import parse_spec
from trainables.data.shapes import ShapesDataset


def test_the_plan_of_a_shapes_study() -> None:
    spec = parse_spec(
        {
            "name": "p",
            "epochs": 3,
            "teacher": {"epochs": 5, "dataset_options": {"context_prob": 0.0}},
            "dataset": {"name": "shapes", "image_size": 32, "options": {"context_prob": 0.5}},
        }
    )
    plan = plan_study(spec)
    assert plan.num_classes == ShapesDataset("val", size=1, image_size=32).num_classes
    assert plan.trial == trial_setup(spec, num_classes=plan.num_classes)
    assert (plan.trial.epochs, plan.teacher.epochs) == (3, 5)
    assert plan.trial.dataset_options == {"image_size": 32, "context_prob": 0.5}
    assert plan.teacher.dataset_options == {"image_size": 32, "context_prob": 0.0}
    assert plan.teacher.num_classes == plan.num_classes
    assert plan.teacher.eval_split == plan.trial.eval_split == "val"


def test_the_class_count_comes_from_the_evaluation_split_on_disk(tmp_path: Path) -> None:
    classes = ("ant", "bee", "cat", "dog")
    for split in ("train", "val"):
        for name in classes:
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            pixels = np.full((16, 16, 3), 40 * len(name), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "0.png")
    spec = parse_spec(
        {"name": "p", "dataset": {"name": "imagefolder", "root": "data", "image_size": 16}},
        base_dir=tmp_path,
    )
    plan = plan_study(spec)
    assert plan.num_classes == len(classes)
    assert plan.trial.dataset_options["root"] == str(tmp_path / "data")
    assert not plan.trial.multi_label
