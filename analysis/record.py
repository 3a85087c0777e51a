"""A study as MLflow holds it, read once through one client (docs/design.md#mlflow-layout).

Every reader of a study needs the same few things: its newest study run (the parent), the spec
it ran with, its teacher run and its trial runs. :func:`load_study_record` finds them by the
names of :mod:`analysis.layout` with one ``MlflowClient``, which the reader keeps for whatever
else it fetches (artifacts), instead of each reader opening its own client and spelling the
layout again.

The spec is the parent run's :data:`~analysis.layout.EFFECTIVE_SPEC_FILE` parsed as YAML: the
raw mapping as the study ran it (``study.spec.Spec`` belongs to the driver, which the analysis
does not import). A parent run without that file (written by hand, or by an older driver) has
``spec`` None and the readers fall back on its flattened params.

MLflow is imported when a record is loaded, not when this module is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from analysis.layout import (
    DEFAULT_OBJECTIVES,
    EFFECTIVE_SPEC_FILE,
    METHOD_PARAM,
    OBJECTIVES_PREFIX,
    ROLE_TAG,
    STUDY_ROLE,
    TEACHER_ROLE,
    Direction,
    enqueued_settings,
    parent_filter,
    role_filter,
)
from analysis.runs import (
    UnknownStudyError,
    study_experiment,
    tracking_client,
    trial_runs,
    trials_table,
)

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run
    from mlflow.tracking import MlflowClient

__all__ = ["NoStudyRunError", "StudyRecord", "load_study_record", "objectives_of_params"]


class NoStudyRunError(UnknownStudyError):
    """The study's experiment holds no (such) study run."""


@dataclass(frozen=True)
class StudyRecord:
    """One study run of a study and the runs nested under it.

    Attributes:
        tracking_uri: the MLflow store.
        client: the client that read the record; use it for anything else fetched.
        experiment: the study's experiment (named after the study).
        parent: the study run (tag ``apc.role=study``).
        spec: the parsed effective spec of the study run; None when it has none.
        teacher: the teacher run nested under it (the first, if several), or None.
        trials: its active trial runs, in start order (as :func:`analysis.runs.load_trials`).
    """

    tracking_uri: str
    client: MlflowClient
    experiment: Experiment
    parent: Run
    spec: Mapping[str, Any] | None
    teacher: Run | None
    trials: tuple[Run, ...]

    @classmethod
    def load(
        cls,
        name_or_experiment: str | Experiment,
        *,
        tracking_uri: str,
        parent_run_id: str | None = None,
    ) -> StudyRecord:
        """See :func:`load_study_record`."""
        return load_study_record(
            name_or_experiment, tracking_uri=tracking_uri, parent_run_id=parent_run_id
        )

    @property
    def name(self) -> str:
        return str(self.experiment.name)

    @property
    def parent_run_id(self) -> str:
        return str(self.parent.info.run_id)

    @property
    def params(self) -> Mapping[str, str]:
        """The study run's params: the spec, flattened (``analysis.layout.flatten_params``)."""
        params: Mapping[str, str] = self.parent.data.params
        return params

    @property
    def method(self) -> str:
        """The study's method; ``-`` when its run names none. From the params, which hold the
        spec's default: the effective spec may leave the method out."""
        return str(self.params.get(METHOD_PARAM, "-"))

    @property
    def enqueued(self) -> list[Mapping[str, Any]]:
        """The enqueued settings: the effective spec's, else decoded from the params."""
        if self.spec is None:
            return enqueued_settings(self.params)
        return [dict(point) for point in self.spec.get("enqueue") or []]

    @property
    def objectives(self) -> dict[str, Direction]:
        """The study's objectives: the effective spec's (``DEFAULT_OBJECTIVES`` when it names
        none), else the params' (:func:`objectives_of_params`)."""
        if self.spec is None:
            return objectives_of_params(self.params)
        named = self.spec.get("objectives")
        if not isinstance(named, Mapping):
            return dict(DEFAULT_OBJECTIVES)
        objectives: dict[str, Direction] = {}
        for name, value in named.items():
            if value in ("min", "max"):
                objectives[str(name)] = "min" if value == "min" else "max"
        return objectives or dict(DEFAULT_OBJECTIVES)

    def table(self) -> pa.Table:
        """The trials as :func:`analysis.runs.load_trials` gives them, one row each."""
        return trials_table(self.trials)


def objectives_of_params(params: Mapping[str, str]) -> dict[str, Direction]:
    """The objectives in a study run's ``objectives.<metric>`` params, in the order MLflow
    gives them; ``DEFAULT_OBJECTIVES`` when there are none."""
    objectives: dict[str, Direction] = {}
    for key, value in params.items():
        name = key.removeprefix(OBJECTIVES_PREFIX)
        if key.startswith(OBJECTIVES_PREFIX) and name and value in ("min", "max"):
            objectives[name] = "min" if value == "min" else "max"
    return objectives or dict(DEFAULT_OBJECTIVES)


def load_study_record(
    name_or_experiment: str | Experiment,
    *,
    tracking_uri: str,
    parent_run_id: str | None = None,
) -> StudyRecord:
    """Read a study from the MLflow store at ``tracking_uri`` through one client.

    Args:
        name_or_experiment: the study's name, or its MLflow experiment.
        tracking_uri: the MLflow store; a local one that does not exist is never created.
        parent_run_id: the study run to read (default: the newest of the experiment).

    Raises:
        TrackingStoreError: the URI names no usable store.
        UnknownStudyError: no active experiment of that name.
        NoStudyRunError: the experiment holds no study run (or not ``parent_run_id``).
    """
    from mlflow.entities import ViewType

    client = tracking_client(tracking_uri)
    if isinstance(name_or_experiment, str):
        experiment = study_experiment(client, tracking_uri, name_or_experiment)
    else:
        experiment = name_or_experiment
    parent = _parent(client, experiment, tracking_uri, parent_run_id)
    run_id = str(parent.info.run_id)
    teachers = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"{parent_filter(run_id)} AND {role_filter(TEACHER_ROLE)}",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return StudyRecord(
        tracking_uri=tracking_uri,
        client=client,
        experiment=experiment,
        parent=parent,
        spec=_effective_spec(client, run_id),
        teacher=teachers[0] if teachers else None,
        trials=tuple(trial_runs(client, experiment, filter_string=parent_filter(run_id))),
    )


def _parent(
    client: MlflowClient, experiment: Experiment, tracking_uri: str, parent_run_id: str | None
) -> Run:
    from mlflow.entities import ViewType

    where = role_filter(STUDY_ROLE)
    if parent_run_id is not None:
        where += f" AND attributes.run_id = '{parent_run_id}'"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=where,
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        which = "no study run" if parent_run_id is None else f"no study run {parent_run_id}"
        raise NoStudyRunError(
            f"study {experiment.name!r}: {which} (tag {ROLE_TAG}={STUDY_ROLE}) in {tracking_uri}"
        )
    parent: Run = runs[0]
    return parent


def _effective_spec(client: MlflowClient, run_id: str) -> Mapping[str, Any] | None:
    """The study run's effective spec as a mapping; None when it has none (or no mapping)."""
    import yaml

    if EFFECTIVE_SPEC_FILE not in [a.path for a in client.list_artifacts(run_id)]:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        path = client.download_artifacts(run_id, EFFECTIVE_SPEC_FILE, scratch)
        with open(path, encoding="utf-8") as file:
            try:
                spec = yaml.safe_load(file)
            except yaml.YAMLError:
                return None
    return spec if isinstance(spec, Mapping) else None
