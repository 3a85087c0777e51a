"""Front models in MLflow's model registry (docs/design.md#registered-front-models).

Each trial on a study's Pareto front becomes a version of the registered model
``<study>-<method>`` (:func:`registered_model_name`). The version is an MLflow PyTorch model in
the ``pt2`` serialization format: the trial's ``torch.export`` program (``model/model.pt2``,
written by :mod:`trainables.export`), logged with ``mlflow.pytorch.log_model(...,
serialization_format="pt2")`` as a logged model of the trial run. Loading it unpickles no code:
``torch.export.load`` reads a graph and raw tensors, and with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` MLflow checks that the archive holds no pickle at
all before it loads it. Two lines load it, with ``MLFLOW_TRACKING_URI`` naming the store:

    import mlflow.pytorch
    model = mlflow.pytorch.load_model("models:/demo-distillation/1")

The logged model carries the trial run's params and, through the run, its last epoch's
metrics; the version's tags say which trial run, study and trial it is, its rank on the front
and its objective values, size metrics and params, and its description says how to load it.
A trial already registered (a version tagged with its run) is not registered again.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from analysis.layout import (
    MODEL_ARTIFACT,
    MODEL_RUN_TAG,
    MODEL_STUDY_TAG,
    MODEL_TRIAL_TAG,
    PARETO_RANK_TAG,
    Direction,
    finished_trials_filter,
    objectives_text,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from analysis.record import StudyRecord

__all__ = [
    "SIZE_METRICS",
    "RegisterOutcome",
    "Registered",
    "register_front",
    "registered_model_name",
]

#: The size metrics a version is tagged with, when its trial logged them.
SIZE_METRICS: Final[tuple[str, ...]] = (
    "params",
    "nonzero_params",
    "param_fraction",
    "model_bytes",
    "model_bytes_sparse",
    "flops",
    "sparsity",
    "latency_ms",
)
#: The loss of every epoch: its steps say which epoch was the trial's last.
_EPOCH_METRIC: Final = "loss"


def registered_model_name(study: str, method: str) -> str:
    """``<study>-<method>``, each character MLflow's registry would trip on (anything but
    letters, digits, ``_``, ``.`` and ``-``) replaced by ``-``."""
    if not study:
        raise ValueError(f"study: must be a non-empty name, got {study!r}")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{study}-{method}")


@dataclass(frozen=True)
class Registered:
    """One front trial: the version it is (new or earlier), or why it has none."""

    rank: int
    trial: str
    run_id: str
    version: str | None
    new: bool
    reason: str = ""


@dataclass(frozen=True)
class RegisterOutcome:
    """What :func:`register_front` did for the registered model ``name``."""

    name: str
    objectives: Mapping[str, Direction]
    filter_string: str
    trials: tuple[Registered, ...]

    @property
    def created(self) -> int:
        return sum(1 for t in self.trials if t.new)

    @property
    def missing(self) -> int:
        return sum(1 for t in self.trials if t.version is None)


def register_front(
    record: StudyRecord,
    *,
    objectives: Mapping[str, Direction] | None = None,
    filter_string: str | None = None,
    progress: Callable[[Registered], None] | None = None,
) -> RegisterOutcome:
    """Register every front model of ``record``'s study as a version of
    ``<study>-<method>`` (created when missing).

    The front is ``apc pareto``'s (:func:`analysis.marks.study_front`) over ``objectives``
    (default: the study's) among the trial runs matching ``filter_string`` (default: the
    FINISHED trials of ``record``'s study run, the front ``apc run`` prints and marks).
    ``progress`` is called with each trial as it is done.

    Raises:
        BadFilterError: MLflow rejects ``filter_string``.
    """
    from analysis.marks import study_front

    chosen = dict(objectives or record.objectives)
    where = filter_string or finished_trials_filter(record.parent_run_id)
    client = record.client
    front = study_front(client, record.experiment, chosen, filter_string=where)
    name = registered_model_name(record.name, record.method)
    existing = _versions_by_run(client, name) if front.num_rows else {}
    if front.num_rows and not existing:
        _ensure_registered_model(client, name, study=record.name)
    done: list[Registered] = []
    for rank, row in enumerate(front.to_pylist(), 1):
        run_id, trial = str(row["run_id"]), str(row.get("trial") or row["run_id"])
        if run_id in existing:
            item = Registered(rank, trial, run_id, existing[run_id], new=False)
        else:
            item = _register_one(
                record, name, row, rank=rank, objectives=chosen, filter_string=where
            )
        done.append(item)
        if progress is not None:
            progress(item)
    return RegisterOutcome(name, chosen, where, tuple(done))


def _versions_by_run(client: MlflowClient, name: str) -> dict[str, str]:
    """Trial run id -> the newest version of ``name`` registered from it."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return {}
    found: dict[str, str] = {}
    for version in sorted(versions, key=lambda v: int(v.version)):
        run_id = version.tags.get(MODEL_RUN_TAG) or version.run_id
        if run_id:
            found[str(run_id)] = str(version.version)
    return found


def _ensure_registered_model(client: MlflowClient, name: str, *, study: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(
            name,
            tags={MODEL_STUDY_TAG: study},
            description=(
                f"The Pareto-front models of study `{study}`, one version per front trial "
                "(`apc register`). Each is a PyTorch `torch.export` program (MLflow's `pt2` "
                "format, no pickled code)."
            ),
        )


def _register_one(
    record: StudyRecord,
    name: str,
    row: Mapping[str, Any],
    *,
    rank: int,
    objectives: Mapping[str, Direction],
    filter_string: str,
) -> Registered:
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    client = record.client
    run_id, trial = str(row["run_id"]), str(row.get("trial") or row["run_id"])
    folder = MODEL_ARTIFACT.rpartition("/")[0]
    if MODEL_ARTIFACT not in [a.path for a in client.list_artifacts(run_id, folder)]:
        return Registered(rank, trial, run_id, None, new=False, reason=f"no {MODEL_ARTIFACT}")
    with tempfile.TemporaryDirectory(prefix="apc-register-") as scratch:
        program = torch.export.load(client.download_artifacts(run_id, MODEL_ARTIFACT, scratch))
    module = program.module()
    example = np.zeros((2, *_image_shape(program)), dtype=np.float32)
    history = client.get_metric_history(run_id, _EPOCH_METRIC)
    with _use_tracking_uri(record.tracking_uri):
        # Logged as a model of the trial run: MLflow copies the run's params onto it and links
        # the metrics of its last epoch; pip requirements are given, not inferred (inferring
        # loads the model again in a subprocess).
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            run_id=run_id,
            serialization_format="pt2",
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            step=max((m.step for m in history), default=0),
        )
        # The registry resolves a ``models:/`` source through the current tracking URI.
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags=_version_tags(record, row, rank=rank, objectives=objectives),
            description=(
                f"Trial `{trial}` of study `{record.name}` (run `{run_id}`), row {rank} of the "
                f"Pareto front over {objectives_text(objectives)} among the trial runs matching "
                f'`{filter_string}`. Load: `mlflow.pytorch.load_model("models:/{name}/<version>")` '
                "(a torch.export program: images [B, 3, S, S], float32, normalised)."
            ),
            model_id=info.model_id,
        )
    return Registered(rank, trial, run_id, str(version.version), new=True)


def _image_shape(program: Any) -> tuple[int, ...]:
    """The shape of one input image of an exported program (without its batch dimension)."""
    users = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in users:
            return tuple(int(d) for d in node.meta["val"].shape[1:])
    raise ValueError("program: must take an image batch as its input, found none")


def _version_tags(
    record: StudyRecord,
    row: Mapping[str, Any],
    *,
    rank: int,
    objectives: Mapping[str, Direction],
) -> dict[str, str]:
    """The trial run, study, trial and rank; objective values and size metrics; params."""
    tags = {
        MODEL_RUN_TAG: str(row["run_id"]),
        MODEL_STUDY_TAG: record.name,
        MODEL_TRIAL_TAG: str(row.get("trial") or ""),
        PARETO_RANK_TAG: str(rank),
    }
    for metric in (*objectives, *SIZE_METRICS):
        value = row.get(metric)
        if isinstance(value, float) and math.isfinite(value):
            tags[metric] = repr(value)
    run = next((r for r in record.trials if r.info.run_id == row["run_id"]), None)
    if run is None:  # a trial of another study run of the study (a --filter chose it)
        run = record.client.get_run(str(row["run_id"]))
    for key, value in run.data.params.items():
        tags.setdefault(key, str(value)[:5000])
    return tags
