"""analysis.report.plots: each plot's info object from small hand-built tables, no MLflow.

The numbers are checked against brute force (dominance by definition, the hypervolume as the
union of boxes summed over a compressed grid, the series by filtering the rows); the drawing
functions only have to turn an info object into a PNG.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from analysis.pareto import Direction
from analysis.report import (
    MATCHING_KINDS,
    ReportRow,
    draw_hypervolume,
    draw_metrics_vs_beta,
    draw_overlay_grid,
    draw_pareto_matrix,
    hypervolume_info,
    metrics_vs_beta_info,
    overlay_info,
    pareto_matrix_info,
    plot_hypervolume,
    plot_metrics_vs_beta,
    plot_pareto_matrix,
)
from trainables.overlays import OverlayMaps

STATUSES = ("FINISHED", "FINISHED", "FINISHED", "FAILED", "RUNNING", "TERMINATED")


def _random_trials(
    rng: random.Random, n: int, objectives: Mapping[str, Direction], *, missing: float = 0.15
) -> pa.Table:
    """``n`` trials in start order: random statuses, small integer objectives, some null."""
    data: dict[str, list[object]] = {
        "run_id": [f"r{i}" for i in range(n)],
        "status": [rng.choice(STATUSES) for _ in range(n)],
    }
    for name in objectives:
        data[name] = [
            None if rng.random() < missing else float(rng.randint(0, 6)) for _ in range(n)
        ]
    return pa.table(data)


def _points(
    table: pa.Table, objectives: Mapping[str, Direction], *, finished_only: bool
) -> list[tuple[int, tuple[float, ...]]]:
    """(row, values) of the rows with every objective (and FINISHED, when asked)."""
    out = []
    for i, record in enumerate(table.to_pylist()):
        if finished_only and record["status"] != "FINISHED":
            continue
        values = tuple(record.get(name) for name in objectives)
        if all(isinstance(v, float) and math.isfinite(v) for v in values):
            out.append((i, values))
    return out


def _dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Direction]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = [(x > y) if d == "max" else (x < y) for x, y, d in zip(a, b, directions, strict=True)]
    worse = [(x < y) if d == "max" else (x > y) for x, y, d in zip(a, b, directions, strict=True)]
    return any(better) and not any(worse)


def _brute_reference(
    points: Sequence[Sequence[float]], directions: Sequence[Direction]
) -> list[float]:
    """The worst value of each objective pushed out by 10% of its range (1 when flat at 0)."""
    out = []
    for j, direction in enumerate(directions):
        column = [Fraction(p[j]) for p in points]
        low, high = min(column), max(column)
        worst = low if direction == "max" else high
        spread = high - low or abs(worst) or Fraction(1)
        out.append(float(worst - spread / 10 if direction == "max" else worst + spread / 10))
    return out


def _brute_volume(
    points: Sequence[Sequence[float]], directions: Sequence[Direction], reference: Sequence[float]
) -> float:
    """The union of the boxes between each point and ``reference``: per cell of the grid of
    every coordinate, its volume when some point dominates its midpoint."""
    if not points:
        return 0.0
    axes = [sorted({p[j] for p in points} | {reference[j]}) for j in range(len(directions))]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        mid = [(axes[j][c] + axes[j][c + 1]) / 2 for j, c in enumerate(cell)]
        inside = any(
            all(
                (ref < m < p[j]) if d == "max" else (p[j] < m < ref)
                for j, (m, ref, d) in enumerate(zip(mid, reference, directions, strict=True))
            )
            for p in points
        )
        if inside:
            total += math.prod(axes[j][c + 1] - axes[j][c] for j, c in enumerate(cell))
    return total


OBJECTIVE_SETS: list[dict[str, Direction]] = [
    {"map": "max", "params": "min"},
    {"map": "max", "attr_auc": "max", "params": "min"},
    {"latency": "min", "flops": "min"},
]


# The Pareto matrix.


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objectives", OBJECTIVE_SETS)
def test_pareto_matrix_marks_exactly_the_brute_force_non_dominated_rows(
    seed: int, objectives: dict[str, Direction]
) -> None:
    rng = random.Random(seed)
    table = _random_trials(rng, rng.randint(1, 14), objectives)
    directions = list(objectives.values())
    points = _points(table, objectives, finished_only=False)
    expected = np.zeros(table.num_rows, bool)
    for i, p in points:
        expected[i] = not any(_dominates(q, p, directions) for _, q in points)

    info = pareto_matrix_info(table, objectives)

    assert info.on_front.tolist() == expected.tolist()
    assert info.front == int(expected.sum())
    assert info.trials == table.num_rows
    assert list(info.objectives) == list(objectives)
    for name in objectives:
        column = [math.nan if v is None else v for v in table.column(name).to_pylist()]
        np.testing.assert_array_equal(info.values[name], np.array(column))


def test_pareto_matrix_keeps_equal_points_and_drops_rows_missing_an_objective() -> None:
    frame = pa.table(
        {
            "run_id": ["a", "b", "c", "d", "e"],
            "status": ["FINISHED"] * 5,
            "map": [60.0, 60.0, 70.0, np.nan, 50.0],
            "params": [1e3, 1e3, 2e5, 10.0, 2e5],
        }
    )
    info = pareto_matrix_info(frame, {"map": "max", "params": "min"})
    # a and b tie (neither dominates the other), c has the best map, d lacks one, e is beaten.
    assert info.on_front.tolist() == [True, True, True, False, False]
    assert info.front == 3
    # params spans two decades: a log axis; map does not.
    assert info.log_scale == {"map": False, "params": True}


def test_pareto_matrix_of_an_objective_the_table_lacks_has_no_front() -> None:
    table = pa.table({"run_id": ["a", "b"], "status": ["FINISHED"] * 2, "map": [1.0, 2.0]})
    info = pareto_matrix_info(table, {"map": "max", "flops": "min"})
    assert info.front == 0
    assert not info.on_front.any()
    assert np.isnan(info.values["flops"]).all()


# The hypervolume history.


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("objectives", OBJECTIVE_SETS)
def test_hypervolume_history_equals_the_brute_force_volume_of_each_prefix(
    seed: int, objectives: dict[str, Direction]
) -> None:
    rng = random.Random(100 + seed)
    table = _random_trials(rng, rng.randint(1, 12), objectives)
    directions = list(objectives.values())
    counted = _points(table, objectives, finished_only=True)

    info = hypervolume_info(table, objectives)

    assert info.trials == table.num_rows
    assert info.finished == table.column("status").to_pylist().count("FINISHED")
    if not counted:
        assert info.reference is None
        assert info.history == ()
        assert info.improved == ()
        return
    reference = _brute_reference([p for _, p in counted], directions)
    assert info.reference is not None
    assert list(info.reference) == list(objectives)
    assert list(info.reference.values()) == pytest.approx(reference)
    assert [k for k, _ in info.history] == list(range(1, table.num_rows + 1))
    expected = [
        _brute_volume([p for i, p in counted if i < k], directions, reference)
        for k in range(1, table.num_rows + 1)
    ]
    assert [v for _, v in info.history] == pytest.approx(expected)
    # Grew: by more than the brute force's rounding.
    grew = [
        k
        for k in range(len(expected))
        if expected[k] > (expected[k - 1] if k else 0.0) * (1 + 1e-9) + 1e-12
    ]
    assert list(info.improved) == grew


def test_hypervolume_counts_only_finished_trials() -> None:
    table = pa.table(
        {
            "run_id": ["a", "b", "c"],
            "status": ["FINISHED", "FAILED", "FINISHED"],
            "map": [1.0, 100.0, 3.0],
            "params": [3.0, 0.0, 1.0],
        }
    )
    info = hypervolume_info(table, {"map": "max", "params": "min"})
    # The FAILED trial's values are neither in the reference nor in any volume.
    assert info.reference == pytest.approx({"map": 0.8, "params": 3.2})
    volumes = [v for _, v in info.history]
    assert volumes == pytest.approx([0.2 * 0.2, 0.2 * 0.2, 0.2 * 0.2 + 2.2 * 2.2 - 0.2 * 0.2])
    assert info.improved == (0, 2)
    assert info.finished == 2


def test_hypervolume_without_a_complete_finished_trial_has_no_reference() -> None:
    table = pa.table(
        {"run_id": ["a"], "status": ["FINISHED"], "map": [None]},
        schema=pa.schema([("run_id", pa.string()), ("status", pa.string()), ("map", pa.float64())]),
    )
    info = hypervolume_info(table, {"map": "max"})
    assert (info.reference, info.history, info.improved) == (None, (), ())


# Metrics against beta.


def _row(method: str, row: str, **metrics: float) -> ReportRow:
    return ReportRow(method, row, "", "", row, f"id-{method}-{row}", metrics)


BETA_TRIALS: dict[str, list[Any]] = {
    "run_id": [f"r{i}" for i in range(9)],
    "method": ["kd", "kd", "kd", "kd", "kd", "prune", "prune", "kd", "kd"],
    "matching": ["none", "ewa", "ewa", "swa", "sswa", "swa", None, "zeta", "alpha"],
    "beta": [0.0, 1.0, 10.0, 2.0, 5.0, 0.5, 3.0, 4.0, None],
    "map": [50.0, 60.0, 61.0, np.nan, 63.0, 40.0, 41.0, 45.0, 46.0],
    "attr_auc": [80.0, 81.0, np.nan, 83.0, 84.0, 70.0, 71.0, 75.0, 76.0],
}


def test_metrics_vs_beta_groups_the_trials_by_matching_kind_and_method() -> None:
    finished = pa.table(BETA_TRIALS)
    rows = [
        _row("kd", "teacher", map=90.0, attr_auc=95.0),
        _row("kd", "naive", map=50.0),
        _row("prune", "teacher", map=90.0),
        _row("prune", "naive", attr_auc=math.nan),
    ]

    info = metrics_vs_beta_info(finished, rows)

    kinds = [k if isinstance(k, str) else "none" for k in BETA_TRIALS["matching"]]
    order = [*MATCHING_KINDS, "alpha", "zeta"]  # known kinds first, then the others sorted
    for metric in ("map", "attr_auc"):
        expected = []
        for kind in order:
            for method in ("kd", "prune"):
                picked = [
                    i
                    for i in range(len(BETA_TRIALS["run_id"]))
                    if kinds[i] == kind
                    and BETA_TRIALS["method"][i] == method
                    and (b := BETA_TRIALS["beta"][i]) is not None
                    and b > 0
                    and math.isfinite(BETA_TRIALS[metric][i])
                ]
                if picked:
                    expected.append((kind, method, picked))
        series = [s for s in info.series if s.metric == metric]
        assert [(s.kind, s.method) for s in series] == [(k, m) for k, m, _ in expected]
        for s, (kind, method, picked) in zip(series, expected, strict=True):
            assert s.beta.tolist() == [BETA_TRIALS["beta"][i] for i in picked]
            assert s.values.tolist() == [BETA_TRIALS[metric][i] for i in picked]
            assert s.label == f"{MATCHING_KINDS.get(kind, kind)} ({method})"
        assert info.shown(metric)
    map_series = [s for s in info.series if s.metric == "map"]
    assert [s.marker for s in map_series if s.method == "prune"] == ["s", "s"]
    assert {s.color for s in map_series if s.kind == "ewa"} == {"tab:blue"}
    # map: trials 1, 2, 4, 5, 6, 7 (0 has beta 0, 3 a NaN map, 8 no beta).
    assert info.plotted == 6
    assert info.left_out == 2
    assert info.trials == 9
    # One teacher line (the first), a naive line per method, only where the value is finite.
    assert [(line.metric, line.label, line.value) for line in info.lines] == [
        ("map", "teacher", 90.0),
        ("map", "naive (table row) (kd)", 50.0),
        ("attr_auc", "teacher", 95.0),
    ]


def test_metrics_vs_beta_of_one_method_without_matching_column() -> None:
    finished = pa.table({"run_id": ["a", "b"], "beta": [0.0, 0.0], "map": [1.0, 2.0]})
    info = metrics_vs_beta_info(finished, [_row("kd", "naive", map=1.5)])
    assert info.series == ()
    assert not info.shown("map")
    assert (info.plotted, info.left_out, info.trials) == (0, 2, 2)
    assert [line.label for line in info.lines] == ["naive (table row)"]


# Attribution overlays.


def _maps(targets: Sequence[int], fill: float, *, indices: Sequence[int] = (0, 1)) -> OverlayMaps:
    n = len(targets)
    return OverlayMaps(
        images=np.zeros((n, 4, 4, 3), np.uint8),
        indices=np.array(indices, np.int64),
        targets=np.array(targets, np.int64),
        class_names=("cat", "dog"),
        teacher=np.full((n, 4, 4), 0.5, np.float32),
        student=np.full((n, 4, 4), fill, np.float32),
    )


def test_overlays_take_the_rows_with_the_first_rows_images_and_classes() -> None:
    rows = [
        _row("kd", "teacher"),
        _row("kd", "naive"),
        _row("kd", "EWA"),
        _row("kd", "SWA"),
        _row("kd", "SSWA"),
        ReportRow("kd", "SSWA", "", "", None, None, {}),
    ]
    maps = {
        "id-kd-teacher": _maps([0, 1], 0.9),  # a teacher row is never a column
        "id-kd-naive": _maps([0, 1], 0.1),
        "id-kd-EWA": _maps([1, 1], 0.2),  # other classes
        "id-kd-SSWA": _maps([0, 1], 0.4),
    }  # SWA logged no maps

    info = overlay_info(rows, maps)

    assert info is not None
    assert info.base is maps["id-kd-naive"]
    assert [label for label, _ in info.columns] == ["teacher", "naive", "SSWA"]
    assert info.drawn == ["naive", "SSWA"]
    assert info.columns[0][1] is maps["id-kd-naive"].teacher
    assert info.columns[2][1] is maps["id-kd-SSWA"].student


def test_overlays_of_several_methods_name_the_method_and_need_maps() -> None:
    rows = [_row("kd", "naive"), _row("prune", "naive"), _row("prune", "EWA")]
    maps = {
        "id-kd-naive": _maps([0, 1], 0.1),
        "id-prune-naive": _maps([0, 1], 0.2),
        "id-prune-EWA": _maps([0, 1], 0.3, indices=(4, 5)),
    }
    info = overlay_info(rows, maps)
    assert info is not None
    assert info.drawn == ["kd naive", "prune naive"]
    assert overlay_info(rows, {}) is None


# Drawing: an info object becomes a PNG.


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_each_info_object_draws_as_a_png(tmp_path: Path) -> None:
    objectives: dict[str, Direction] = {"map": "max", "params": "min"}
    table = _random_trials(random.Random(3), 10, objectives, missing=0.0)
    draw_pareto_matrix(pareto_matrix_info(table, objectives), tmp_path / "p.png", title="t")
    draw_hypervolume(hypervolume_info(table, objectives), tmp_path / "h.png", title="t")
    empty = pa.table({"run_id": ["a"], "status": ["FAILED"], "map": [1.0], "params": [1.0]})
    draw_hypervolume(hypervolume_info(empty, objectives), tmp_path / "h0.png")
    beta = metrics_vs_beta_info(pa.table(BETA_TRIALS), [_row("kd", "naive", map=5.0)])
    draw_metrics_vs_beta(beta, tmp_path / "b.png", title="t")
    grid = overlay_info([_row("kd", "naive")], {"id-kd-naive": _maps([0, 1], 0.5)})
    assert grid is not None
    draw_overlay_grid(grid, tmp_path / "o.png", title="t")
    for name in ("p", "h", "h0", "b", "o"):
        width, height = _png(tmp_path / f"{name}.png")
        assert min(width, height) > 100
    # The overlay grid: 2 images as rows; image, teacher and naive as columns.
    width, height = _png(tmp_path / "o.png")
    assert width > height


def test_the_plot_functions_return_their_info_objects_numbers(tmp_path: Path) -> None:
    objectives: dict[str, Direction] = {"map": "max", "params": "min"}
    table = _random_trials(random.Random(5), 9, objectives)
    finished = table.filter(pa.array([s == "FINISHED" for s in table["status"].to_pylist()]))
    front = plot_pareto_matrix(finished, objectives, tmp_path / "p.png")
    assert front == pareto_matrix_info(finished, objectives).front
    history, reference = plot_hypervolume(table, objectives, tmp_path / "h.png")
    info = hypervolume_info(table, objectives)
    assert (tuple(history), reference) == (info.history, info.reference)
    beta = pa.table(BETA_TRIALS)
    assert plot_metrics_vs_beta(beta, [], tmp_path / "b.png") == 6
