"""Read a study's trial runs back from MLflow as one Arrow table (docs/design.md#mlflow-layout).

One row per trial run (tag ``apc.role=trial``) of the experiment named after the study; the
columns are ``run_id``, ``trial`` (the run name: the Ray trial id), ``status``, then every param
(float64 where every value given parses as a number, else string; null where a trial does not
have it, e.g. ``beta`` when ``matching`` is ``none``), then every metric (float64: the run's
latest value, i.e. that of the last epoch; null where a trial never logged it). Params and
metrics are each in name order. A param whose name a run column or a metric already uses is
named ``params.<name>``, and a metric named like a run column ``metrics.<name>``.

Each field's metadata says what it is: ``apc.kind`` is ``run``, ``param`` or ``metric`` and
``apc.name`` is the name in MLflow; ``param_columns`` and ``metric_columns`` read it back.

MLflow is imported when ``load_trials`` is called, not when this module is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlparse

import pyarrow as pa

from analysis.layout import COLUMN_KIND_KEY, COLUMN_NAME_KEY, TRIAL_FILTER

if TYPE_CHECKING:
    from mlflow.entities import Experiment
    from mlflow.tracking import MlflowClient

__all__ = [
    "TRIAL_FILTER",
    "BadFilterError",
    "RunsQueryError",
    "TrackingStoreError",
    "UnknownStudyError",
    "load_studies",
    "load_trials",
    "metric_columns",
    "param_columns",
    "study_experiment",
    "tracking_client",
    "trial_runs",
    "trials_table",
]

#: Runs fetched per ``search_runs`` call (MLflow's own default page size).
PAGE_SIZE = 1000

#: Field metadata keys (:data:`analysis.layout.COLUMN_KIND_KEY` and ``COLUMN_NAME_KEY``).
KIND: Final = COLUMN_KIND_KEY
NAME: Final = COLUMN_NAME_KEY
_RUN_COLUMNS: Final = ("run_id", "trial", "study", "status")
_ORDER_BY: Final = ["attributes.start_time ASC", "attributes.run_name ASC", "attributes.run_id ASC"]


class RunsQueryError(ValueError):
    """The study, the tracking store or the filter the caller named is not usable."""


class UnknownStudyError(RunsQueryError):
    """No (active) experiment carries the study's name."""


class BadFilterError(RunsQueryError):
    """MLflow rejected the filter expression; ``reason`` is MLflow's message."""

    def __init__(self, filter_string: str, reason: str) -> None:
        super().__init__(f"filter {filter_string!r}: {reason}")
        self.filter_string = filter_string
        self.reason = reason


class TrackingStoreError(RunsQueryError):
    """The tracking URI names no usable MLflow store."""


def load_trials(tracking_uri: str, study: str, *, filter_string: str | None = None) -> pa.Table:
    """The trial runs of ``study`` in the MLflow store at ``tracking_uri``, one row each.

    ``filter_string`` is an MLflow search expression AND-ed to the trial filter, e.g.
    ``"params.matching = 'swa'"`` or ``"metrics.map > 50 AND attributes.status = 'FINISHED'"``
    (MLflow knows no OR and no parentheses; param values are strings and must be quoted).
    Deleted runs are left out. Rows are in start order.

    Raises ``UnknownStudyError`` when no active experiment is named ``study``,
    ``BadFilterError`` when MLflow rejects the filter and ``TrackingStoreError`` when the URI
    names no usable store; a local SQLite or file store that does not exist is never created.
    """
    client = tracking_client(tracking_uri)
    experiment = study_experiment(client, tracking_uri, study)
    return trials_table(trial_runs(client, experiment, filter_string=filter_string))


def load_studies(
    tracking_uri: str, studies: Sequence[str], *, filter_string: str | None = None
) -> pa.Table:
    """The trial runs of several studies as one table, e.g. to mix methods in one Pareto front.

    As :func:`load_trials` for each study (in the order given, each in start order), plus a
    ``study`` column (kind ``run``) after ``trial``; a param or metric that only some studies
    have is null in the others' rows. One study gives exactly ``load_trials``' table.
    """
    if not studies:
        raise ValueError("studies: must name at least one study, got none")
    client = tracking_client(tracking_uri)
    runs: list[Any] = []
    names: list[str] = []
    for study in dict.fromkeys(studies):
        experiment = study_experiment(client, tracking_uri, study)
        found = trial_runs(client, experiment, filter_string=filter_string)
        runs += found
        names += [study] * len(found)
    return trials_table(runs, studies=names if len(set(studies)) > 1 else None)


def tracking_client(tracking_uri: str) -> MlflowClient:
    """The one ``MlflowClient`` a reader needs for ``tracking_uri``.

    A local SQLite or file store that does not exist raises ``TrackingStoreError`` instead of
    being created: a mistyped URI must not leave an empty store behind.
    """
    from mlflow.tracking import MlflowClient

    missing = _missing_local_store(tracking_uri)
    if missing is not None:
        raise TrackingStoreError(
            f"tracking URI {tracking_uri!r}: no MLflow store there ({missing} does not exist)"
        )
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri=tracking_uri)
    except MlflowException as error:
        message = str(error.message).strip()
        raise TrackingStoreError(f"tracking URI {tracking_uri!r}: {message}") from None


def study_experiment(client: MlflowClient, tracking_uri: str, study: str) -> Experiment:
    """The active experiment named ``study``.

    Raises ``UnknownStudyError`` (naming the studies there are) when there is none, or it is
    deleted, and ``TrackingStoreError`` when the store does not answer as an MLflow store.
    """
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment_by_name(study)
    except MlflowException as error:
        message = str(error.message).strip()
        raise TrackingStoreError(f"tracking URI {tracking_uri!r}: {message}") from None
    if experiment is None:
        raise UnknownStudyError(
            f"study {study!r}: no such experiment in {tracking_uri}; "
            f"known: {_known_studies(client, ViewType.ACTIVE_ONLY)}"
        )
    if experiment.lifecycle_stage != "active":
        raise UnknownStudyError(
            f"study {study!r}: its experiment (id {experiment.experiment_id}) is deleted in "
            f"{tracking_uri}; restore it with `mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`"
        )
    return experiment


def trial_runs(
    client: MlflowClient, experiment: Experiment, *, filter_string: str | None = None
) -> list[Any]:
    """The active trial runs of ``experiment`` in start order, ``filter_string`` AND-ed.

    Raises ``BadFilterError`` when MLflow rejects ``filter_string``.
    """
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    user = (filter_string or "").strip()
    where = f"{TRIAL_FILTER} AND {user}" if user else TRIAL_FILTER
    runs: list[Any] = []
    token: str | None = None
    while True:
        try:
            page = client.search_runs(
                [experiment.experiment_id],
                filter_string=where,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=PAGE_SIZE,
                order_by=_ORDER_BY,
                page_token=token,
            )
        except MlflowException as error:
            if user and error.error_code == "INVALID_PARAMETER_VALUE":
                raise BadFilterError(user, error.message) from None
            raise
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def param_columns(table: pa.Table) -> list[str]:
    """The columns of a ``load_trials`` table that hold MLflow params, in table order."""
    return _columns_of_kind(table, b"param")


def metric_columns(table: pa.Table) -> list[str]:
    """The columns of a ``load_trials`` table that hold MLflow metrics, in table order."""
    return _columns_of_kind(table, b"metric")


def _columns_of_kind(table: pa.Table, kind: bytes) -> list[str]:
    return [f.name for f in table.schema if f.metadata is not None and f.metadata.get(KIND) == kind]


def trials_table(runs: Sequence[Any], *, studies: list[str] | None = None) -> pa.Table:
    """The table of ``runs`` (trial runs), one row each in the order given; ``studies``: the
    ``study`` column's values, one per run (None: no such column)."""
    param_names = sorted({name for run in runs for name in run.data.params})
    metric_names = sorted({name for run in runs for name in run.data.metrics})
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []

    def add(name: str, kind: bytes, source: str, array: pa.Array) -> None:
        fields.append(pa.field(name, array.type, metadata={KIND: kind, NAME: source.encode()}))
        arrays.append(array)

    add("run_id", b"run", "run_id", pa.array([r.info.run_id for r in runs], pa.string()))
    add("trial", b"run", "run_name", pa.array([r.info.run_name for r in runs], pa.string()))
    if studies is not None:
        add("study", b"run", "experiment", pa.array(studies, pa.string()))
    add("status", b"run", "status", pa.array([r.info.status for r in runs], pa.string()))
    metric_fields = {n: f"metrics.{n}" if n in _RUN_COLUMNS else n for n in metric_names}
    taken = set(_RUN_COLUMNS) | set(metric_fields.values())
    for name in param_names:
        values = [run.data.params.get(name) for run in runs]
        add(f"params.{name}" if name in taken else name, b"param", name, _param_array(name, values))
    for name in metric_names:
        metric = pa.array([run.data.metrics.get(name) for run in runs], pa.float64())
        add(metric_fields[name], b"metric", name, metric)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _param_array(name: str, values: list[str | None]) -> pa.Array:
    """float64 when every given value is a number (run ids excepted), else string."""
    if not name.endswith("run_id"):
        numbers = [None if value is None else _number(value) for value in values]
        if all(n is not None for n, v in zip(numbers, values, strict=True) if v is not None):
            return pa.array(numbers, pa.float64())
    return pa.array(values, pa.string())


def _number(text: str) -> float | None:
    if "_" in text:  # float() reads "1_000"; a param value written so is a label, not a number
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _known_studies(client: MlflowClient, view_type: int) -> str:
    names = sorted(
        experiment.name
        for experiment in client.search_experiments(view_type=view_type, max_results=1000)
        if experiment.experiment_id != "0"  # MLflow's "Default" experiment holds no study
    )
    if not names:
        return "none"
    return ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")


def _missing_local_store(uri: str) -> str | None:
    """The path of a local SQLite or file store that ``uri`` names and that does not exist."""
    if uri.startswith("sqlite:"):
        rest = uri[len("sqlite:") :]
        if not rest.startswith("///"):
            return None  # "sqlite://": in memory
        path = unquote(rest[3:].split("?", 1)[0])
        if path in ("", ":memory:"):
            return None
    else:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            path = unquote(parsed.path)
        elif parsed.scheme == "":
            path = uri
        else:
            return None
    return None if Path(path).exists() else str(Path(path).absolute())
