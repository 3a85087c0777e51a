"""Tests of analysis.pies against hand-computed PIEs and group means."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from analysis.pies import modal_labels, pie_summary, population_pies
from trainables.trial_artifacts import per_sample_table


def _table(
    predicted: list[list[int]], teacher: list[list[int]], **columns: list[object]
) -> pa.Table:
    def matrix(sets: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(sets), 4), dtype=bool)
        for row, classes in enumerate(sets):
            out[row, classes] = True
        return out

    data = {
        "index": np.arange(len(predicted)),
        "predicted": matrix(predicted),
        "teacher_predicted": matrix(teacher),
    }
    data.update({k: np.asarray(v) for k, v in columns.items()})
    return per_sample_table(data)


def test_summary_splits_statistics_between_pies_and_the_rest() -> None:
    table = _table(
        predicted=[[0], [1], [0, 2], [], [3]],
        teacher=[[0], [2], [0, 2], [1], [3]],
        correct=[True, False, True, False, False],
        teacher_correct=[True, True, True, False, True],
        attr_cos=[0.9, 0.2, 0.8, math.nan, 0.5],
        attr_auc_lrp=[70.0, 40.0, 90.0, 10.0, math.nan],
    )
    summary = pie_summary(table)
    # PIEs: rows 1 and 3 (their class sets differ from the teacher's).
    assert (summary.samples, summary.pies, summary.pie_fraction) == (5, 2, 0.4)
    assert summary.pie["accuracy"] == 0.0
    assert summary.rest["accuracy"] == pytest.approx(200 / 3)
    assert summary.pie["teacher_accuracy"] == 50.0
    assert summary.rest["teacher_accuracy"] == 100.0
    assert summary.pie["attr_cos"] == pytest.approx(0.2)  # the NaN of row 3 is no value
    assert summary.rest["attr_cos"] == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    assert summary.pie["attr_auc_lrp"] == pytest.approx(25.0)
    assert summary.rest["attr_auc_lrp"] == pytest.approx(80.0)
    assert "attr_auc" not in summary.pie  # no such column: no statistic
    explicit = pie_summary(table, np.array([True, False, False, False, False]))
    assert explicit.pie["attr_cos"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"pies: must hold one flag per row \(5\), got \(2,\)"):
        pie_summary(table, np.array([True, False]))


def test_modal_labels_vote_per_index_and_break_ties_by_first_seen() -> None:
    a = _table([[0], [1], [2]], [[0], [1], [2]])
    b = _table([[0], [3], [2, 3]], [[0], [1], [2]])
    c = _table([[1], [3], [1]], [[0], [1], [2]])
    # c in another row order: matched by index, not by position.
    c = c.take([2, 0, 1])
    assert modal_labels([a, b, c]) == [(0,), (3,), (2,)]  # row 2: a three-way tie, a first
    pies = population_pies([a, b, c])
    assert pies.tolist() == [False, True, False]
    reference = [_table([[0], [3], [1]], [[0], [0], [0]])]
    assert population_pies([a, b, c], reference).tolist() == [False, False, True]


def test_modal_labels_refuse_tables_of_other_samples() -> None:
    a = _table([[0], [1]], [[0], [1]])
    b = _table([[0], [1], [2]], [[0], [1], [2]])
    with pytest.raises(ValueError, match=r"tables\[1\]: must hold the samples of tables\[0\]"):
        modal_labels([a, b])
    with pytest.raises(ValueError, match="tables: must hold at least one"):
        modal_labels([])
    with pytest.raises(ValueError, match="must have a 'predicted' column"):
        pie_summary(a.drop_columns(["predicted"]))
