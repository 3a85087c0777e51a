"""MLflow layout of a study (design.md, "MLflow layout"), written by the driver only.

experiment = study name; a parent run (tag ``apc.role=study``) with the spec as params and as
an artifact; a teacher run (``apc.role=teacher``) and one run per trial (``apc.role=trial``),
both nested under the parent through ``mlflow.parentRunId``. Trials never talk to MLflow: the
driver's Tune callback logs their per-epoch results (step = epoch), so workers need no access
to the tracking server and a trial restarted from a checkpoint keeps its one run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from study.objectives import NAN_TAG, sampler_substitutes, tag_text
from study.spec import Spec
from trainables.export import MODEL_FILE
from trainables.metric_names import METRICS

__all__ = ["ROLE_TAG", "StudyTracker", "study_exists", "trial_params"]

ROLE_TAG = "apc.role"
PARENT_TAG = "mlflow.parentRunId"
SEARCHED_PARAMS = ("matching", "beta", "drop_p", "prune_rate", "student_width")


def trial_params(config: Mapping[str, Any], *, method: str, teacher_run_id: str) -> dict[str, str]:
    """A trial's MLflow params: the method, the searched values that apply, the teacher run."""
    params = {"method": method, "teacher_run_id": teacher_run_id}
    for key in SEARCHED_PARAMS:
        if key in config:
            params[key] = str(config[key])
    return params


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)


def study_exists(tracking_uri: str, name: str) -> bool:
    """Whether ``name`` already has a study run in the store (a missing SQLite file: no)."""
    if tracking_uri.startswith("sqlite:///"):
        from pathlib import Path

        if not Path(tracking_uri.removeprefix("sqlite:///")).exists():
            return False  # and asking would create the store before anything ran
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return False
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'study'", max_results=1
    )
    return len(runs) > 0


class StudyTracker:
    """Creates and fills a study's MLflow runs through one ``MlflowClient``."""

    def __init__(self, tracking_uri: str, spec: Spec) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.spec = spec
        experiment = self.client.get_experiment_by_name(spec.name)
        self.experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(spec.name)
        )
        self.parent_run_id = ""
        self.trial_runs: dict[str, str] = {}

    def start_study(self, spec_text: str) -> str:
        """Create the parent run, log the spec as params and as ``spec.yaml``."""
        run = self.client.create_run(
            self.experiment_id, run_name=self.spec.name, tags={ROLE_TAG: "study"}
        )
        self.parent_run_id = run.info.run_id
        params: dict[str, str] = {}
        spec = asdict(self.spec)
        spec.pop("search_space")
        _flatten("", spec, params)
        for key, value in params.items():
            self.client.log_param(self.parent_run_id, key[:250], value[:6000])
        self.client.log_text(self.parent_run_id, spec_text, "spec.yaml")
        return self.parent_run_id

    def log_teacher(
        self,
        metrics: Mapping[str, float],
        params: Mapping[str, str],
        *,
        weights: Path | None = None,
    ) -> str:
        """The teacher run, nested under the study, with its evaluation metrics and weights.

        ``weights`` (a state dict file) is logged as ``weights/<name>``, so the teacher a
        study used can be fetched from MLflow alone.
        """
        run = self.client.create_run(
            self.experiment_id,
            run_name="teacher",
            tags={ROLE_TAG: "teacher", PARENT_TAG: self.parent_run_id},
        )
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        self._log_metrics(run.info.run_id, metrics, step=0)
        if weights is not None:
            self.client.log_artifact(run.info.run_id, str(weights), "weights")
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return str(run.info.run_id)

    def _log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # NaN is logged (an epoch whose metric is undefined says so, and a NaN final value
        # keeps a trial off `apc pareto`'s front, as the sampler's worst value keeps it off
        # Optuna's); infinities are no measurement and are dropped.
        batch = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if key in METRICS and isinstance(value, int | float) and not math.isinf(float(value))
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def trial_started(self, trial_id: str, params: Mapping[str, str]) -> str:
        """The trial's run (created once; a restarted trial keeps its run)."""
        if trial_id in self.trial_runs:
            return self.trial_runs[trial_id]
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_id,
            tags={ROLE_TAG: "trial", PARENT_TAG: self.parent_run_id, "apc.trial_id": trial_id},
        )
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        self.trial_runs[trial_id] = run.info.run_id
        return str(run.info.run_id)

    def trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Log one epoch's metrics with step = epoch."""
        step = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        self._log_metrics(self.trial_runs[trial_id], result, step=step)

    def trial_objectives(self, trial_id: str, result: Mapping[str, Any] | None) -> None:
        """Tag the run with the objectives the sampler was told the worst value for, and why.

        A NaN metric is logged as NaN (a missing one stays absent); the tag says why it has
        no value, with the policy of :mod:`study.objectives` that the searcher applies.
        """
        run_id = self.trial_runs.get(trial_id)
        substitutes = sampler_substitutes(result, self.spec.objectives)
        if run_id is not None and substitutes:
            self.client.set_tag(run_id, NAN_TAG, tag_text(substitutes)[:5000])

    def trial_model(self, trial_id: str, checkpoint: Any) -> None:
        """Log the compressed model in the trial's last Tune checkpoint, if it holds one.

        Trials save it with their last epoch (``trainables.export``); it is logged as the
        artifact ``model/model.pt2``, which ``torch.export.load(path).module()`` loads.
        """
        run_id = self.trial_runs.get(trial_id)
        if run_id is None or checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            path = Path(folder) / MODEL_FILE
            if path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path="model")

    def trial_ended(self, trial_id: str, *, failed: bool, reason: str = "") -> None:
        run_id = self.trial_runs.get(trial_id)
        if run_id is None:
            return
        if reason:
            self.client.set_tag(run_id, "apc.failure", reason[:5000])
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def end_study(self, *, failed: bool = False) -> None:
        self.client.set_terminated(self.parent_run_id, "FAILED" if failed else "FINISHED")


def tune_callback(tracker: StudyTracker, *, method: str, teacher_run_id: str) -> Any:
    """A Ray Tune callback that mirrors trials into ``tracker`` (runs in the driver)."""
    from ray.tune import Callback

    class MlflowTrials(Callback):
        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            params = trial_params(trial.config, method=method, teacher_run_id=teacher_run_id)
            tracker.trial_started(trial.trial_id, params)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            tracker.trial_result(trial.trial_id, result)

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            tracker.trial_objectives(trial.trial_id, trial.last_result)
            tracker.trial_model(trial.trial_id, trial.checkpoint)
            tracker.trial_ended(trial.trial_id, failed=False)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            error = trial.get_error()
            reason = str(error).strip().splitlines()[-1] if error else "trial failed"
            tracker.trial_ended(trial.trial_id, failed=True, reason=reason)

    return MlflowTrials()
