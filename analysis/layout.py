"""The MLflow layout of a study (docs/design.md#mlflow-layout): one place for every name in it.

The driver (:mod:`study.tracking`) writes a study this way and every reader (:mod:`analysis.
record`, :mod:`analysis.runs`, :mod:`analysis.effect`, :mod:`analysis.report`, ``apc pareto``
and ``apc report``) reads it back through these names, so that the writer and the readers
cannot drift apart:

- experiment = the study's name; a parent run (tag :data:`ROLE_TAG` = :data:`STUDY_ROLE`)
  holding the spec as flattened params (:func:`flatten_params`) and as the artifacts
  :data:`SPEC_FILE` and :data:`EFFECTIVE_SPEC_FILE`;
- the experiment tagged :data:`EXPERIMENT_KIND_TAG` = :data:`MODEL_TRAINING_KIND`, so that
  MLflow's UI treats it as model training, and :func:`ui_runs_url`, the UI's page of its runs;
- a teacher run (:data:`TEACHER_ROLE`) and one run per trial (:data:`TRIAL_ROLE`, tagged with
  its Ray trial id :data:`TRIAL_TAG`), both nested under the parent through
  :data:`PARENT_TAG` (the tag MLflow's UI nests by; :func:`parent_filter` selects them);
- a trial's params (:func:`trial_params`) and artifacts (:data:`TRIAL_ARTIFACTS`, paths such as
  :data:`PER_SAMPLE_ARTIFACT`), and the tags the driver adds when something went other than
  planned (:data:`FAILURE_TAG`, :data:`STOPPED_TAG`, :data:`REPEATED_TAG`, :data:`ORPHAN_TAG`,
  :data:`NAN_TAG`);
- the Pareto marks (:data:`PARETO_TAG`, :data:`PARETO_RANK_TAG` on trial runs; what they are
  over, :data:`PARETO_OBJECTIVES_TAG` and :data:`PARETO_FILTER_TAG`, and the description
  :data:`NOTE_TAG` on the study run), and the tags of a registered front model's versions
  (:data:`MODEL_RUN_TAG`, :data:`MODEL_STUDY_TAG`, :data:`MODEL_TRIAL_TAG`).

Only the names live here, no MLflow calls: importing this module is cheap and imports neither
MLflow nor torch (the trial-side file names come from :mod:`trainables.artifact_names`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from trainables.artifact_names import (
    DRAWN_ARTIFACTS,
    MAPS_FILE,
    MODEL_FILE,
    OVERLAY_FILE,
    PER_SAMPLE_FILE,
    TRIAL_ARTIFACTS,
)
from trainables.metric_names import Direction
from trainables.registry import searched_parameters

__all__ = [
    "COLUMN_KIND_KEY",
    "COLUMN_NAME_KEY",
    "DEFAULT_OBJECTIVES",
    "DRAWN_ARTIFACTS",
    "EFFECTIVE_SPEC_FILE",
    "ENQUEUE_PARAM",
    "EXPERIMENT_KIND_TAG",
    "FAILURE_TAG",
    "MAPS_ARTIFACT",
    "MAPS_FILE",
    "METHOD_PARAM",
    "MODEL_ARTIFACT",
    "MODEL_FILE",
    "MODEL_RUN_TAG",
    "MODEL_STUDY_TAG",
    "MODEL_TRAINING_KIND",
    "MODEL_TRIAL_TAG",
    "NAN_TAG",
    "NODES_TAG",
    "NOTE_TAG",
    "OBJECTIVES_PREFIX",
    "OFF_FRONT",
    "ON_FRONT",
    "ORPHAN_TAG",
    "OVERLAY_ARTIFACT",
    "OVERLAY_FILE",
    "PARENT_TAG",
    "PARETO_FILTER_TAG",
    "PARETO_OBJECTIVES_TAG",
    "PARETO_RANK_TAG",
    "PARETO_TAG",
    "PER_SAMPLE_ARTIFACT",
    "PER_SAMPLE_FILE",
    "REPEATED_TAG",
    "REPORT_DIR",
    "ROLE_TAG",
    "SEARCHED_PARAMS",
    "SETTING_PARAMS",
    "SPEC_FILE",
    "STOPPED_TAG",
    "STUDY_ROLE",
    "TAG_KEYS",
    "TEACHER_ROLE",
    "TEACHER_RUN_NAME",
    "TEACHER_RUN_PARAM",
    "TEACHER_WEIGHTS_DIR",
    "TRIAL_ARTIFACTS",
    "TRIAL_FILTER",
    "TRIAL_ROLE",
    "TRIAL_TAG",
    "Direction",
    "Role",
    "enqueued_settings",
    "finished_trials_filter",
    "flatten_params",
    "front_filter",
    "objectives_text",
    "parent_filter",
    "role_filter",
    "trial_artifact",
    "trial_params",
    "ui_runs_url",
]

# Tags.

#: What a run is to its study: :data:`STUDY_ROLE`, :data:`TEACHER_ROLE` or :data:`TRIAL_ROLE`.
ROLE_TAG: Final = "apc.role"
#: MLflow's own nesting tag: the UI shows a teacher or trial run under its study run.
PARENT_TAG: Final = "mlflow.parentRunId"
#: On a trial run: its Ray trial id, by which a resumed study finds its run again.
TRIAL_TAG: Final = "apc.trial_id"
#: On a trial run: the Ray nodes it ran on, in order, comma-separated.
NODES_TAG: Final = "apc.node_ids"
#: On a FAILED trial run: the last line of its error.
FAILURE_TAG: Final = "apc.failure"
#: On a trial run that logged some epochs twice (a resume re-ran them; the later values count).
REPEATED_TAG: Final = "apc.repeated_epochs"
#: On the deleted run of a trial a resumed study does not know (``StudyTracker.discard_orphans``).
ORPHAN_TAG: Final = "apc.orphaned"
#: On a trial the scheduler stopped before its last epoch: its metrics are that epoch's.
STOPPED_TAG: Final = "apc.stopped_early"
#: On a trial run: the objectives the sampler was told the worst value for, and why
#: (:mod:`study.objectives`).
NAN_TAG: Final = "apc.nan_objectives"
#: On a trial run: :data:`ON_FRONT` when it is on the Pareto front its study was last marked
#: with (the driver's after each finished trial, or ``apc pareto NAME --mark``'s), else
#: :data:`OFF_FRONT`; the UI's search ``tags.apc.pareto = "true"`` lists the front.
PARETO_TAG: Final = "apc.pareto"
#: On a trial run on the front: its row in the front's table as ``apc pareto`` prints it
#: (1 = first: best in the first objective, ties by the next, then by trial); absent off it.
PARETO_RANK_TAG: Final = "apc.pareto_rank"
#: On the study run: the objectives the marked front is over (``map:max,params:min``).
PARETO_OBJECTIVES_TAG: Final = "apc.pareto_objectives"
#: On the study run: the MLflow filter the marked front's trials were chosen by.
PARETO_FILTER_TAG: Final = "apc.pareto_filter"
#: MLflow's own description of a run (Markdown, shown on the run's page).
NOTE_TAG: Final = "mlflow.note.content"
#: On a registered model version: the trial run its model is, its study and its trial.
MODEL_RUN_TAG: Final = "apc.trial_run_id"
MODEL_STUDY_TAG: Final = "apc.study"
MODEL_TRIAL_TAG: Final = "apc.trial"
#: Values of :data:`PARETO_TAG`.
ON_FRONT: Final = "true"
OFF_FRONT: Final = "false"
#: MLflow's own experiment tag for what an experiment is for (MLflow 3's UI writes it with its
#: experiment-kind selector); set on the study's experiment when the driver creates it.
EXPERIMENT_KIND_TAG: Final = "mlflow.experimentKind"
#: Its value for model training ("custom model development"; ``genai_development`` opens an
#: experiment on traces): the UIs that read the tag open the experiment on its runs.
MODEL_TRAINING_KIND: Final = "custom_model_development"
#: Every tag key of the layout (a source test keeps their literals in this module).
TAG_KEYS: Final[tuple[str, ...]] = (
    ROLE_TAG,
    PARENT_TAG,
    EXPERIMENT_KIND_TAG,
    TRIAL_TAG,
    NODES_TAG,
    FAILURE_TAG,
    REPEATED_TAG,
    ORPHAN_TAG,
    STOPPED_TAG,
    NAN_TAG,
    PARETO_TAG,
    PARETO_RANK_TAG,
    PARETO_OBJECTIVES_TAG,
    PARETO_FILTER_TAG,
    NOTE_TAG,
    MODEL_RUN_TAG,
    MODEL_STUDY_TAG,
    MODEL_TRIAL_TAG,
)

#: The query MLflow 3.17's UI takes for its "Machine learning" workflow. That UI chooses an
#: experiment's tabs and landing page by this workflow type (the query, else what the browser
#: last chose, at first "genai": an "Overview" of traces), not by EXPERIMENT_KIND_TAG.
_UI_WORKFLOW_QUERY: Final = "workflowType=machine_learning"


def ui_runs_url(server: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs (a study's run with its trials nested),
    in the model-training view, on the UI served at ``server`` (``http://127.0.0.1:5000``)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{_UI_WORKFLOW_QUERY}"


# Roles (values of ROLE_TAG).

Role = Literal["study", "teacher", "trial"]
STUDY_ROLE: Final[Role] = "study"
TEACHER_ROLE: Final[Role] = "teacher"
TRIAL_ROLE: Final[Role] = "trial"
#: The run name of a study's teacher run (a study run is named after the study, a trial run
#: after its Ray trial id).
TEACHER_RUN_NAME: Final = "teacher"


def role_filter(role: Role) -> str:
    """The MLflow filter that selects the runs of ``role``."""
    return f"tags.\"{ROLE_TAG}\" = '{role}'"


def parent_filter(parent_run_id: str) -> str:
    """The MLflow filter that selects the runs nested under the study run ``parent_run_id``
    (AND it to :data:`TRIAL_FILTER` for its trials)."""
    return f"tags.{PARENT_TAG} = '{parent_run_id}'"


#: MLflow filter that selects the trial runs of a study's experiment.
TRIAL_FILTER: Final = role_filter(TRIAL_ROLE)


def finished_trials_filter(parent_run_id: str) -> str:
    """The FINISHED trial runs of the study run ``parent_run_id`` (AND-ed to
    :data:`TRIAL_FILTER` by the readers): the trials ``apc run`` prints and marks the front of;
    a FAILED (diverged) or KILLED (stopped early) trial measured no trained student."""
    return f"{parent_filter(parent_run_id)} AND attributes.status = 'FINISHED'"


def front_filter() -> str:
    """The MLflow filter (the UI's search box takes it as is) that lists the marked front."""
    return f'tags.{PARETO_TAG} = "{ON_FRONT}"'


def objectives_text(objectives: Mapping[str, Direction]) -> str:
    """``map:max,params:min``: objectives as ``--objectives`` takes them (and tags hold them)."""
    return ",".join(f"{name}:{direction}" for name, direction in objectives.items())


# Params.

#: The searched parameters a trial run logs as params when its config has them (every
#: method's, from its descriptor in trainables.registry; a trial logs only those that apply,
#: e.g. no ``beta`` unmatched).
SEARCHED_PARAMS: Final[tuple[str, ...]] = searched_parameters()
#: The searched params that tell one setting of a matching kind from another.
SETTING_PARAMS: Final[tuple[str, ...]] = tuple(p for p in SEARCHED_PARAMS if p != "matching")
#: On a trial run: its trainable; on the study run: the spec's method.
METHOD_PARAM: Final = "method"
#: On a trial run: the run id of the study's teacher.
TEACHER_RUN_PARAM: Final = "teacher_run_id"
#: On the study run: the spec's enqueued settings, as a JSON list of mappings.
ENQUEUE_PARAM: Final = "enqueue"
#: On the study run: ``objectives.<metric>`` = ``min`` | ``max``, one param per objective.
OBJECTIVES_PREFIX: Final = "objectives."
#: The objectives of a study whose spec names none.
DEFAULT_OBJECTIVES: Final[dict[str, Direction]] = {"map": "max", "attr_auc": "max", "params": "min"}


def trial_params(config: Mapping[str, Any], *, method: str, teacher_run_id: str) -> dict[str, str]:
    """A trial's MLflow params: the method, the searched values that apply, the teacher run."""
    params = {METHOD_PARAM: method, TEACHER_RUN_PARAM: teacher_run_id}
    for key in SEARCHED_PARAMS:
        if key in config:
            params[key] = str(config[key])
    return params


def flatten_params(fields: Mapping[str, Any]) -> dict[str, str]:
    """The study run's params of a spec's fields: nested mappings as dotted keys
    (``objectives.map``), lists as JSON (``enqueue``), anything else as ``str``.

    MLflow params are flat strings; dotted keys keep them browsable one by one in the UI.
    """
    out: dict[str, str] = {}
    _flatten("", fields, out)
    return out


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)


def enqueued_settings(parent_params: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """The enqueued settings of a study run, decoded from its :data:`ENQUEUE_PARAM`."""
    settings: list[Mapping[str, Any]] = json.loads(parent_params.get(ENQUEUE_PARAM, "[]"))
    return settings


# Artifacts.

#: On the study run: the spec file as written.
SPEC_FILE: Final = "spec.yaml"
#: On the study run: the spec as the study ran it (overrides applied, paths absolute): what
#: ``apc resume`` and the readers (:class:`analysis.record.StudyRecord`) read.
EFFECTIVE_SPEC_FILE: Final = "spec.effective.yaml"
#: On the teacher run: the folder of its state dict file.
TEACHER_WEIGHTS_DIR: Final = "weights"
#: On the study run: the folder ``apc report`` logs its files to.
REPORT_DIR: Final = "report"


def trial_artifact(name: str) -> str:
    """A trial run's artifact path of its checkpoint file ``name`` (:data:`TRIAL_ARTIFACTS`) or
    of a file the driver draws from one (:data:`DRAWN_ARTIFACTS`)."""
    folder = TRIAL_ARTIFACTS[name] if name in TRIAL_ARTIFACTS else DRAWN_ARTIFACTS[name]
    return f"{folder}/{name}"


#: The compressed model of a trial run (``torch.export.load(path).module()`` loads it).
MODEL_ARTIFACT: Final = trial_artifact(MODEL_FILE)
#: The per-sample table of a trial run (:mod:`analysis.pies`).
PER_SAMPLE_ARTIFACT: Final = trial_artifact(PER_SAMPLE_FILE)
#: The attribution maps of a trial run (:mod:`trainables.overlays`).
MAPS_ARTIFACT: Final = trial_artifact(MAPS_FILE)
#: The drawn attribution overlay of a trial run.
OVERLAY_ARTIFACT: Final = trial_artifact(OVERLAY_FILE)

# The trials' table (analysis.runs): field metadata keys.

#: Arrow field metadata: ``run``, ``param`` or ``metric``.
COLUMN_KIND_KEY: Final = b"apc.kind"
#: Arrow field metadata: the column's name in MLflow.
COLUMN_NAME_KEY: Final = b"apc.name"
