"""PIEs: the samples compression made the model forget (../shared/papers/pie-paper-summary.md).

A pruning-identified exemplar (PIE) is a sample whose label under the compressed model differs
from its label under the uncompressed one. With populations of models on each side (several
seeds), the label of a side is its *modal* label, the most frequent prediction over the
population; with one model on each side, it is that model's prediction. Here a label is a
model's whole predicted class set (multi-label data) or its arg-max class (single-label).

Input is a trial's per-sample table (``evaluation/per_sample.parquet`` in its MLflow run, see
:data:`trainables.evaluation.PER_SAMPLE_COLUMNS`): ``index``, ``predicted`` and
``teacher_predicted`` (class index lists), ``teacher_agree``, ``correct``, ``teacher_correct``
and the per-image attribution columns (``attr_auc``, ``attr_cos``...).

- :func:`pie_summary`: PIE count and fraction, and accuracy and attribution deformation on the
  PIEs against the rest (the PIE paper: PIEs are harder, and compression hurts them most).
- :func:`modal_labels` / :func:`population_pies`: modal labels over several trials' tables
  (e.g. one setting run with several seeds) and the PIEs they define.
- :func:`load_per_sample`: a trial run's table from MLflow.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from analysis.layout import PER_SAMPLE_ARTIFACT
from analysis.runs import tracking_client
from trainables.metric_names import ATTRIBUTION_METHOD_NAMES, ATTRIBUTION_METRICS, method_metric

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "PER_SAMPLE_ARTIFACT",
    "PIE_STATISTICS",
    "PieSummary",
    "load_per_sample",
    "modal_labels",
    "pie_summary",
    "population_pies",
]

#: Statistic -> the per-sample column it averages (in % for the boolean ones).
PIE_STATISTICS: Final[dict[str, str]] = {
    "accuracy": "correct",
    "teacher_accuracy": "teacher_correct",
    "attr_auc": "attr_auc",
    "point_acc": "point_acc",
    "attr_cos": "attr_cos",
    "attr_l2": "attr_l2",
}

Label = tuple[int, ...]


@dataclass(frozen=True)
class PieSummary:
    """PIEs of one per-sample table and how the model fares on them and on the rest.

    ``pie`` and ``rest`` map each statistic of :data:`PIE_STATISTICS` (further attribution
    methods' columns included, e.g. ``attr_auc_lrp``) to its mean over the PIEs and over the
    other samples (NaN where no sample of the group has a value); accuracies in %.
    """

    samples: int
    pies: int
    pie: Mapping[str, float]
    rest: Mapping[str, float]

    @property
    def pie_fraction(self) -> float:
        return self.pies / self.samples if self.samples else math.nan


def _labels(table: pa.Table, column: str) -> list[Label]:
    if column not in table.schema.names:
        raise ValueError(
            f"per-sample table: must have a {column!r} column, got {table.schema.names}"
        )
    return [tuple(sorted(int(c) for c in row or ())) for row in table.column(column).to_pylist()]


def _mean(values: npt.NDArray[np.float64]) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _statistic_columns(table: pa.Table) -> dict[str, str]:
    columns = {
        name: column for name, column in PIE_STATISTICS.items() if column in table.schema.names
    }
    further = {
        method_metric(metric, method)
        for method in ATTRIBUTION_METHOD_NAMES[1:]
        for metric in ATTRIBUTION_METRICS
    }
    columns.update({name: name for name in table.schema.names if name in further})
    return columns


def pie_summary(table: pa.Table, pies: npt.NDArray[np.bool_] | None = None) -> PieSummary:
    """PIEs of a per-sample table and the statistics of PIEs against the other samples.

    Args:
        table: a per-sample table (one row per image).
        pies: bool [N], which rows are PIEs; by default where ``predicted`` differs from
            ``teacher_predicted`` (one model on each side).
    """
    if pies is None:
        pies = np.array(
            [
                a != b
                for a, b in zip(
                    _labels(table, "predicted"), _labels(table, "teacher_predicted"), strict=True
                )
            ],
            dtype=bool,
        )
    if pies.shape != (table.num_rows,):
        raise ValueError(f"pies: must hold one flag per row ({table.num_rows}), got {pies.shape}")
    groups: dict[str, dict[str, float]] = {"pie": {}, "rest": {}}
    for name, column in _statistic_columns(table).items():
        values = np.asarray(
            [math.nan if v is None else float(v) for v in table.column(column).to_pylist()],
            dtype=np.float64,
        )
        if pa.types.is_boolean(table.schema.field(column).type):
            values = values * 100.0
        groups["pie"][name] = _mean(values[pies])
        groups["rest"][name] = _mean(values[~pies])
    return PieSummary(table.num_rows, int(pies.sum()), groups["pie"], groups["rest"])


def modal_labels(tables: Sequence[pa.Table], *, column: str = "predicted") -> list[Label]:
    """Per sample, the most frequent label of ``column`` over ``tables``.

    Rows are matched by their ``index`` column; every table must hold the same samples. Ties
    go to the label seen first in ``tables``' order, so the result does not depend on how
    Python orders sets.
    """
    if not tables:
        raise ValueError("tables: must hold at least one per-sample table, got none")
    order = tables[0].column("index").to_pylist()
    votes: list[Counter[Label]] = [Counter() for _ in order]
    first_seen: list[dict[Label, int]] = [{} for _ in order]
    position = {index: row for row, index in enumerate(order)}
    for number, table in enumerate(tables):
        indices = table.column("index").to_pylist()
        if sorted(indices) != sorted(order):
            raise ValueError(
                f"tables[{number}]: must hold the samples of tables[0] ({len(order)} indices), "
                f"got {len(indices)} with {len(set(indices) ^ set(order))} differing"
            )
        for index, label in zip(indices, _labels(table, column), strict=True):
            row = position[index]
            votes[row][label] += 1
            first_seen[row].setdefault(label, number)
    return [
        max(counts, key=lambda label: (counts[label], -seen[label]))
        for counts, seen in zip(votes, first_seen, strict=True)
    ]


def population_pies(
    compressed: Sequence[pa.Table], reference: Sequence[pa.Table] | None = None
) -> npt.NDArray[np.bool_]:
    """PIEs of a population of compressed models: modal label differs from the reference's.

    Args:
        compressed: per-sample tables of the compressed models (e.g. one setting, several seeds).
        reference: per-sample tables of the uncompressed models, whose ``predicted`` is their
            label; by default the ``teacher_predicted`` column of ``compressed``.

    Returns:
        bool [N], in the row order of ``compressed[0]``.
    """
    theirs = (
        modal_labels(compressed, column="teacher_predicted")
        if reference is None
        else _aligned(modal_labels(reference), reference[0], compressed[0])
    )
    ours = modal_labels(compressed)
    return np.array([a != b for a, b in zip(ours, theirs, strict=True)], dtype=bool)


def _aligned(labels: list[Label], source: pa.Table, target: pa.Table) -> list[Label]:
    by_index = dict(zip(source.column("index").to_pylist(), labels, strict=True))
    try:
        return [by_index[index] for index in target.column("index").to_pylist()]
    except KeyError as missing:
        raise ValueError(
            f"reference: must hold every sample of the compressed tables, lacks index {missing}"
        ) from None


def load_per_sample(
    tracking_uri: str, run_id: str, *, client: MlflowClient | None = None
) -> pa.Table | None:
    """The per-sample table of trial run ``run_id``, or None when the run has none.

    ``client``: one already open on ``tracking_uri`` (a reader's
    :attr:`analysis.record.StudyRecord.client`), so that reading many runs opens none.
    """
    import pyarrow.parquet as pq
    from mlflow.exceptions import MlflowException

    if client is None:
        client = tracking_client(tracking_uri)
    folder, _, name = PER_SAMPLE_ARTIFACT.partition("/")
    if name not in [Path(a.path).name for a in client.list_artifacts(run_id, folder)]:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, PER_SAMPLE_ARTIFACT, scratch)
        except MlflowException:
            return None
        return pq.read_table(path)
