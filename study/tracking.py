"""MLflow layout of a study (docs/design.md#mlflow-layout), written by the driver only.

experiment = study name; a parent run (tag ``apc.role=study``) with the spec as params and as
an artifact; a teacher run (``apc.role=teacher``) and one run per trial (``apc.role=trial``),
both nested under the parent through ``mlflow.parentRunId``. Trials never talk to MLflow: the
driver's Tune callback logs their per-epoch results (step = epoch), so workers need no access
to the tracking server and a trial restarted from a checkpoint keeps its one run.
Every name in the layout (tags, roles, params, artifact paths) is :mod:`analysis.layout`'s, which
the readers use too.

The study's own runs are written synchronously when it starts (the server was just found
reachable); everything the trials produce goes through a :class:`~study.log_queue.LogQueue`,
so a tracking server that is briefly down delays their records instead of stalling Tune.
A resumed study (``apc resume``) finds its trial runs again by their ``apc.trial_id`` tag.

Every record can be applied again after an outage cut it short: a trial's run is looked up by
that tag before it is created, and its params are compared with what the run holds, so a
run created just before the store went away still gets them. A record MLflow refuses is
quarantined (:attr:`StudyTracker.quarantine`) and costs only itself: a later record of a
trial whose run was never created creates it.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from analysis.layout import (
    DRAWN_ARTIFACTS,
    EFFECTIVE_SPEC_FILE,
    EXPERIMENT_KIND_TAG,
    FAILURE_TAG,
    MAPS_FILE,
    MODEL_TRAINING_KIND,
    NODES_TAG,
    ORPHAN_TAG,
    OVERLAY_FILE,
    PARENT_TAG,
    REPEATED_TAG,
    ROLE_TAG,
    SPEC_FILE,
    STOPPED_TAG,
    STUDY_ROLE,
    TEACHER_ROLE,
    TEACHER_RUN_NAME,
    TEACHER_WEIGHTS_DIR,
    TRIAL_ARTIFACTS,
    TRIAL_ROLE,
    TRIAL_TAG,
    finished_trials_filter,
    flatten_params,
    parent_filter,
    role_filter,
    trial_params,
)
from study.log_queue import LogQueue, Record, is_unreachable
from study.objectives import NAN_TAG, sampler_substitutes, tag_text
from study.spec import Spec
from trainables.metric_names import METRICS, Direction

# The layout's names (analysis.layout) are re-exported for the driver's other modules.
__all__ = [
    "EFFECTIVE_SPEC_FILE",
    "PARENT_TAG",
    "ROLE_TAG",
    "StudyTracker",
    "find_study",
    "study_exists",
    "trial_params",
]

#: MLflow run statuses a trial's run ends with.
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


def find_study(tracking_uri: str, name: str) -> Any | None:
    """The newest study run (``apc.role=study``) of ``name``, or None (a missing SQLite file:
    None, without creating the store)."""
    if (
        tracking_uri.startswith("sqlite:///")
        and not Path(tracking_uri.removeprefix("sqlite:///")).exists()
    ):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=role_filter(STUDY_ROLE),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def study_exists(tracking_uri: str, name: str) -> bool:
    """Whether ``name`` already has a study run in the store (a missing SQLite file: no)."""
    return find_study(tracking_uri, name) is not None


class StudyTracker:
    """Creates and fills a study's MLflow runs through one ``MlflowClient``.

    Args:
        tracking_uri: the MLflow store.
        name: the study (its experiment).
        objectives: metric -> "min" | "max", for the NaN-objective tag.
        spool: where records still pending at :meth:`close` are kept (JSON lines).
    """

    def __init__(
        self, tracking_uri: str, *, name: str, objectives: Mapping[str, Direction], spool: Path
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.name = name
        self.objectives = dict(objectives)
        experiment = self.client.get_experiment_by_name(name)
        # Marked as model training, so that MLflow's UI opens it on its runs, not on traces.
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
            )
        else:
            self.experiment_id = experiment.experiment_id
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # a study older than the tag
                self.client.set_experiment_tag(
                    self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
                )
        self.parent_run_id = ""
        #: trial id -> run id, filled by the log thread (read it after :meth:`flush`).
        self.trial_runs: dict[str, str] = {}
        self._nodes: dict[str, list[str]] = {}
        self._last_step: dict[str, int] = {}
        self._repeated: dict[str, set[int]] = {}
        #: trial id -> the params its latest start record asked for (log thread only).
        self._params: dict[str, dict[str, str]] = {}
        #: trial id -> the params its run is known to hold (log thread only).
        self._logged_params: dict[str, dict[str, str]] = {}
        #: trial id -> the params MLflow refused since its latest start (log thread only).
        self._refused_params: dict[str, set[str]] = {}
        self._queue = LogQueue(self._apply, spool=spool)

    # The study's own runs: written at once.

    def start_study(self, spec: Spec, spec_text: str, effective_text: str) -> str:
        """Create the parent run; log the spec as params, ``spec.yaml`` (the file as written)
        and ``spec.effective.yaml`` (as run: overrides applied, paths absolute)."""
        run = self.client.create_run(
            self.experiment_id, run_name=self.name, tags={ROLE_TAG: STUDY_ROLE}
        )
        self.parent_run_id = run.info.run_id
        _ACTIVE[self.parent_run_id] = self
        spec_fields = asdict(spec)
        spec_fields.pop("search_space")
        spec_fields.pop("given_paths")  # the same paths as typed: spec.yaml holds them
        for key, value in flatten_params(spec_fields).items():
            self.client.log_param(self.parent_run_id, key[:250], value[:6000])
        self.client.log_text(self.parent_run_id, spec_text, SPEC_FILE)
        self.client.log_text(self.parent_run_id, effective_text, EFFECTIVE_SPEC_FILE)
        from analysis.marks import describe_front

        describe_front(
            self.client,
            self.parent_run_id,
            study=self.name,
            objectives=self.objectives,
            filter_string=finished_trials_filter(self.parent_run_id),
            by="apc run",
        )
        return self.parent_run_id

    def attach(self, parent_run_id: str) -> int:
        """Continue the study ``parent_run_id`` (``apc resume``): find its trial runs, mark it
        running again, queue what an earlier :meth:`close` spooled; returns that count.

        The spool is read before anything in MLflow changes (a torn line is skipped with a
        warning), so that nothing it holds can fail a resume that has marked the study running.
        """
        spooled_file = self._queue.spool.is_file()
        spooled = LogQueue.load_spool(self._queue.spool)
        self.parent_run_id = parent_run_id
        _ACTIVE[parent_run_id] = self
        for run in self._search(role_filter(TRIAL_ROLE)):
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id:
                self.trial_runs[trial_id] = run.info.run_id
                self._logged_params[trial_id] = dict(run.data.params)
                nodes = run.data.tags.get(NODES_TAG, "")
                self._nodes[trial_id] = nodes.split(",") if nodes else []
                # Any trial may re-run epochs it logged: Tune's snapshot can predate even a
                # finish that MLflow already holds.
                history = self.client.get_metric_history(run.info.run_id, "loss")
                self._last_step[trial_id] = max((m.step for m in history), default=-1)
        self.client.update_run(parent_run_id, status="RUNNING")
        for record in spooled:
            self._queue.put(record)
        # The file goes once its records are in; until then a kill loses nothing. A file of
        # torn lines only goes too: else every `apc resume` would find it again.
        if spooled_file:
            self._queue.put({"op": "spool_delivered"})
        return len(spooled)

    def teacher_run(self) -> str | None:
        """The study's teacher run, if it was logged."""
        runs = self._search(role_filter(TEACHER_ROLE))
        return str(runs[0].info.run_id) if runs else None

    def _search(self, filter_string: str) -> list[Any]:
        parent = parent_filter(self.parent_run_id)
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"{parent} AND {filter_string}",
                max_results=50000,
            )
        )

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
            run_name=TEACHER_RUN_NAME,
            tags={ROLE_TAG: TEACHER_ROLE, PARENT_TAG: self.parent_run_id},
        )
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        batch = _metric_batch(metrics)
        if batch:
            self._log_batch(run.info.run_id, batch, step=0)
        if weights is not None:
            self.client.log_artifact(run.info.run_id, str(weights), TEACHER_WEIGHTS_DIR)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return str(run.info.run_id)

    # What the trials produce: queued.

    def trial_started(self, trial_id: str, params: Mapping[str, str]) -> None:
        """The trial's run (created once; a restarted or resumed trial keeps its run)."""
        self._queue.put({"op": "start", "trial": trial_id, "params": dict(params)})

    def trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Log one epoch's metrics with step = epoch, and the node the trial ran on."""
        step = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        node = result.get("node_id")
        if isinstance(node, str) and node:  # first: an epoch in MLflow says where it ran
            self._queue.put({"op": "node", "trial": trial_id, "node": node})
        batch = _metric_batch(result)
        if batch:
            self._queue.put(
                {
                    "op": "metrics",
                    "trial": trial_id,
                    "metrics": batch,
                    "step": step,
                    "time": int(time.time() * 1000),
                }
            )

    def trial_objectives(self, trial_id: str, result: Mapping[str, Any] | None) -> None:
        """Tag the run with the objectives the sampler was told the worst value for, and why.

        A NaN metric is logged as NaN (a missing one stays absent); the tag says why it has
        no value, with the policy of :mod:`study.objectives` that the searcher applies.
        """
        substitutes = sampler_substitutes(result, self.objectives)
        if substitutes:
            self.trial_tag(trial_id, NAN_TAG, tag_text(substitutes))

    def trial_tag(self, trial_id: str, key: str, value: str) -> None:
        self._queue.put({"op": "tag", "trial": trial_id, "key": key, "value": value[:5000]})

    def trial_artifacts(self, trial_id: str, checkpoint: Any) -> None:
        """Log the files of the trial's last Tune checkpoint that are artifacts of its run.

        Trials write them with their last epoch (:data:`trainables.trial_artifacts.
        TRIAL_ARTIFACTS`: the compressed model as ``model/model.pt2``, which
        ``torch.export.load(path).module()`` loads; per-sample results as
        ``evaluation/per_sample.parquet``; attribution maps under ``attributions/``, with the
        overlay drawn from them here).
        Each file is copied next to the spool first, so it outlives Tune's checkpoint clean-up.
        """
        if checkpoint is None:
            return
        kept_dir = self._queue.spool.parent / "pending-artifacts" / trial_id
        kept_files: dict[str, Path] = {}
        with checkpoint.as_directory() as folder:
            for name, artifact_dir in TRIAL_ARTIFACTS.items():
                path = Path(folder) / name
                if not path.is_file():
                    continue
                kept = kept_dir / artifact_dir / name
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, kept)
                kept_files[name] = kept
                self._queue.put(
                    {"op": "artifact", "trial": trial_id, "path": str(kept), "dir": artifact_dir}
                )
        if MAPS_FILE in kept_files:
            from analysis.report.plots import draw_trial_overlay

            overlay_dir = DRAWN_ARTIFACTS[OVERLAY_FILE]
            drawn = draw_trial_overlay(kept_files[MAPS_FILE], kept_dir / overlay_dir / OVERLAY_FILE)
            self._queue.put(
                {"op": "artifact", "trial": trial_id, "path": str(drawn), "dir": overlay_dir}
            )

    def trial_ended(self, trial_id: str, *, status: RunStatus, reason: str = "") -> None:
        """End the trial's run: FINISHED, FAILED (``reason`` tagged) or KILLED (stopped early
        by the scheduler: its metrics are those of an unfinished training)."""
        if reason:
            self.trial_tag(trial_id, FAILURE_TAG, reason)
        self._queue.put({"op": "end", "trial": trial_id, "status": status})
        # After the end, in the queue's order: the front is read back from what MLflow holds.
        self._queue.put({"op": "front"})

    def backfill(
        self, trials: Sequence[Mapping[str, Any]], *, method: str, teacher_run_id: str
    ) -> None:
        """Log what Tune recorded of ``trials`` and MLflow lacks (``apc resume``).

        A killed driver loses the records still in its queue, and Tune will not replay the
        results of trials it finished. Each item holds ``trial`` (id), ``config``, ``status``
        (Tune's), ``results`` (the trial's reported results, from its ``result.json``) and
        ``checkpoint``: missing runs are created, missing epochs logged, and a run still
        RUNNING whose trial Tune had ended is ended the same way (its model logged).
        """
        for trial in trials:
            trial_id = str(trial["trial"])
            params = trial_params(trial["config"], method=method, teacher_run_id=teacher_run_id)
            self.trial_started(trial_id, params)
            results = [
                {
                    "step": int(r["epoch"]),
                    "metrics": _metric_batch(r),
                    "time": int(float(r.get("timestamp", 0)) * 1000),
                    "node": r.get("node_id"),
                }
                for r in trial["results"]
                if "epoch" in r
            ]
            self._queue.put({"op": "backfill", "trial": trial_id, "results": results})
            if trial["status"] in ("TERMINATED", "ERROR"):
                last = trial["results"][-1] if trial["results"] else None
                self._queue.put(
                    {
                        "op": "end_if_running",
                        "trial": trial_id,
                        "status": "FINISHED" if trial["status"] == "TERMINATED" else "FAILED",
                    }
                )
                if trial["status"] == "TERMINATED":
                    self.trial_objectives(trial_id, last)
                    self.trial_artifacts(trial_id, trial["checkpoint"])

    def discard_orphans(self, trial_ids: list[str]) -> None:
        """Delete the trial runs of trials Tune does not know (``trial_ids`` are all it knows).

        A driver killed mid-study leaves behind the runs of trials that started after Tune's
        last snapshot of the experiment: ``Tuner.restore`` has never heard of them and runs
        their place in the study again as new trials. Such a run is tagged
        ``apc.orphaned``, ended KILLED and deleted (MLflow keeps it; ``mlflow gc`` purges it).
        """
        self._queue.put({"op": "orphans", "known": sorted(trial_ids)})

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until every queued record is in MLflow; False if some still are not."""
        return self._queue.flush(timeout_s)

    def close(self, *, status: str, timeout_s: float = 120.0) -> int:
        """End the study run with ``status`` (FINISHED, FAILED, KILLED) after the trials'
        records; wait up to ``timeout_s`` for them; returns how many had to be spooled.

        The front is marked once more first: a resume's backfilled trials end without Tune's
        callback, and a run MLflow refused a record of may stand elsewhere than when it ended."""
        self._queue.put({"op": "front"})
        self._queue.put({"op": "end_study", "status": status})
        left = self._queue.close(timeout_s)
        _ACTIVE.pop(self.parent_run_id, None)
        return left

    @property
    def spool(self) -> Path:
        return self._queue.spool

    @property
    def quarantine(self) -> Path:
        """The JSON-lines file of the records MLflow refused, each with its reason."""
        return self._queue.quarantine

    @property
    def quarantined(self) -> int:
        """How many records this tracker's queue wrote to :attr:`quarantine`."""
        return self._queue.quarantined

    @property
    def outage_s(self) -> float:
        """Seconds the log thread spent waiting for an unreachable store."""
        return self._queue.outage_s

    # The log thread.

    def _apply(self, record: Record) -> None:
        op = record["op"]
        if op == "end_study":
            self.client.set_terminated(self.parent_run_id, record["status"])
            return
        if op == "spool_delivered":
            self._queue.spool.unlink(missing_ok=True)
            return
        if op == "orphans":
            self._discard(set(record["known"]))
            return
        if op == "front":
            self._mark_front()
            return
        trial_id = record["trial"]
        if op == "start":
            self._params[trial_id] = dict(record["params"])
            self._refused_params.pop(trial_id, None)  # each start asks for all its params
            refused = self._trial_run(trial_id)[1]
            if refused:
                raise _ParamsRefusedError(trial_id, refused)
            return
        # Params MLflow refused are for the start record to report (it is quarantined).
        run_id = self._trial_run(trial_id)[0]
        if op == "metrics":
            self._log_batch(run_id, record["metrics"], step=record["step"], time_ms=record["time"])
            self._note_repeats(trial_id, run_id, record["step"])
        elif op == "backfill":
            logged = {m.step for m in self.client.get_metric_history(run_id, "loss")}
            for result in record["results"]:
                if result["step"] not in logged and result["metrics"]:
                    self._log_batch(
                        run_id, result["metrics"], step=result["step"], time_ms=result["time"]
                    )
                    self._note_repeats(trial_id, run_id, result["step"])
                if result["node"]:
                    self._apply({"op": "node", "trial": trial_id, "node": result["node"]})
        elif op == "end_if_running":
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, record["status"])
        elif op == "node":
            nodes = self._nodes.setdefault(trial_id, [])
            if not nodes or nodes[-1] != record["node"]:
                nodes.append(record["node"])
                self.client.set_tag(run_id, NODES_TAG, ",".join(nodes)[:5000])
        elif op == "tag":
            self.client.set_tag(run_id, record["key"], record["value"])
        elif op == "artifact":
            path = Path(record["path"])
            if path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path=record["dir"])
                path.unlink(missing_ok=True)
        elif op == "end":
            # A trial Tune had finished after its last snapshot ends again after a resume.
            if self.client.get_run(run_id).info.status != record["status"]:
                self.client.set_terminated(run_id, record["status"])
        else:
            raise ValueError(f"unknown log record op {op!r}")

    def _mark_front(self) -> None:
        """Tag every trial run on or off the Pareto front of the study's objectives over this
        study run's FINISHED trials: the front ``apc run`` prints (:mod:`analysis.marks`)."""
        from analysis.marks import mark_front

        mark_front(
            self.client,
            self.client.get_experiment(self.experiment_id),
            self.objectives,
            filter_string=finished_trials_filter(self.parent_run_id),
        )

    def _note_repeats(self, trial_id: str, run_id: str, step: int) -> None:
        """Tag a run that logs an epoch again: a killed driver's last Tune snapshot may predate
        a trial's newest checkpoint, and ``Tuner.restore`` then re-runs the epochs after it.
        MLflow keeps both values of such a step; the later one is the re-run's."""
        last = self._last_step.get(trial_id, -1)
        self._last_step[trial_id] = max(last, step)
        if step > last:
            return
        repeated = self._repeated.setdefault(trial_id, set())
        repeated.add(step)
        steps = ",".join(str(s) for s in sorted(repeated))
        self.client.set_tag(
            run_id,
            REPEATED_TAG,
            f"{steps} (re-run after a resume; the later value of each is the one that counts)",
        )

    def _discard(self, known: set[str]) -> None:
        for run in self._search(role_filter(TRIAL_ROLE)):
            trial_id = run.data.tags.get(TRIAL_TAG, "")
            if trial_id in known:
                continue
            self.client.set_tag(
                run.info.run_id,
                ORPHAN_TAG,
                "started after Tune's last "
                "snapshot before its driver died; `apc resume` ran its place "
                "in the study again as another trial",
            )
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
            self.client.delete_run(run.info.run_id)
            self.trial_runs.pop(trial_id, None)
            self._params.pop(trial_id, None)  # a late record of it must not bring it back

    def _trial_run(self, trial_id: str) -> tuple[str, dict[str, str]]:
        """The run of ``trial_id`` (known, found by its tag, or created now) once it holds the
        params of the trial's start; returns it and the params MLflow refused just now
        (key -> reason).

        Any record of a trial may create its run and log its params, so that a start record
        cut short by an outage or refused (and quarantined) costs that record only.
        """
        run_id = self.trial_runs.get(trial_id)
        if run_id is None:
            run_id = self._find_or_create_run(trial_id)
        return run_id, self._log_missing_params(trial_id, run_id)

    def _find_or_create_run(self, trial_id: str) -> str:
        if trial_id not in self._params:
            raise LookupError(
                f"trial {trial_id}: no run, and no start record of it reached this tracker "
                "(a record of a trial that never started, or whose run was discarded)"
            )
        # A run created just before the store went away may exist although the call failed.
        found = self._search(f"tags.`{TRIAL_TAG}` = '{trial_id}'")
        if found:
            run_id = str(found[0].info.run_id)
            self._logged_params[trial_id] = dict(found[0].data.params)
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=trial_id,
                tags={ROLE_TAG: TRIAL_ROLE, PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id},
            )
            run_id = str(run.info.run_id)
            self._logged_params[trial_id] = {}
        # Known from here on: should its params fail, the next try finds it without a search.
        self.trial_runs[trial_id] = run_id
        return run_id

    def _log_missing_params(self, trial_id: str, run_id: str) -> dict[str, str]:
        """Log the params of ``trial_id``'s start that its run lacks (none: no request);
        returns those MLflow refused (key -> reason). An outage raises: the record is tried
        again, as a whole, and logs what is still missing.

        Only missing keys are logged: MLflow refuses to change a param, and a value the run
        already holds was logged by an earlier try or driver of the same trial.
        """
        from mlflow.entities import Param

        logged = self._logged_params.setdefault(trial_id, {})
        refused = self._refused_params.setdefault(trial_id, set())
        missing = {
            key: value
            for key, value in self._params.get(trial_id, {}).items()
            if key not in logged and key not in refused
        }
        if not missing:
            return {}
        try:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in missing.items()])
        except Exception as error:
            if is_unreachable(error):
                raise
            # MLflow refuses a batch as a whole: one param at a time, the others still land.
            reasons: dict[str, str] = {}
            for key, value in missing.items():
                try:
                    self.client.log_param(run_id, key, value)
                except Exception as param_error:
                    if is_unreachable(param_error):
                        raise
                    reasons[key] = str(param_error).strip()
                    refused.add(key)
                else:
                    logged[key] = value
            return reasons
        logged.update(missing)
        return {}

    def _log_batch(
        self, run_id: str, metrics: Mapping[str, float], *, step: int, time_ms: int | None = None
    ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000) if time_ms is None else time_ms
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)


class _ParamsRefusedError(ValueError):
    """MLflow refused some params of a trial's start record (the others were logged)."""

    def __init__(self, trial_id: str, refused: Mapping[str, str]) -> None:
        reasons = "; ".join(f"{key}: {reason}" for key, reason in refused.items())
        super().__init__(f"trial {trial_id}: MLflow refused params {sorted(refused)} ({reasons})")


def _metric_batch(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The canonical metrics of a result, as floats.

    NaN is kept (an epoch whose metric is undefined says so, and a NaN final value keeps a
    trial off `apc pareto`'s front, as the sampler's worst value keeps it off Optuna's);
    infinities are no measurement and are dropped.
    """
    return {
        key: float(value)
        for key, value in metrics.items()
        if key in METRICS and isinstance(value, int | float) and not math.isinf(float(value))
    }


#: Trackers of the studies this process is running, by parent run id: a callback that Tune
#: restored from its pickled state (``Tuner.restore``) finds the live tracker here.
_ACTIVE: dict[str, StudyTracker] = {}


def tune_callback(
    tracker: StudyTracker, *, method: str, teacher_run_id: str, iterations: int | None = None
) -> Any:
    """A Ray Tune callback that mirrors trials into ``tracker`` (runs in the driver).

    ``iterations``: the reports of a trial that runs to the end, when a scheduler may stop
    trials early; a trial that completes with fewer is tagged ``apc.stopped_early``.
    """
    from ray.tune import Callback

    class MlflowTrials(Callback):
        def __init__(self) -> None:
            self.parent_run_id = tracker.parent_run_id

        @property
        def tracker(self) -> StudyTracker:
            return _active_tracker(self.parent_run_id)

        def __reduce__(self) -> Any:
            # Tune pickles its callbacks with the Tuner's state; the tracker (a thread, a
            # client) stays behind and is found again by parent run id.
            return (_restored_callback, (self.parent_run_id, method, teacher_run_id, iterations))

        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            params = trial_params(trial.config, method=method, teacher_run_id=teacher_run_id)
            self.tracker.trial_started(trial.trial_id, params)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            self.tracker.trial_result(trial.trial_id, result)

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.tracker.trial_objectives(trial.trial_id, trial.last_result)
            done = int((trial.last_result or {}).get("training_iteration", 0))
            stopped = iterations is not None and done < iterations
            if stopped:
                self.tracker.trial_tag(
                    trial.trial_id, STOPPED_TAG, f"after {done} of {iterations} epochs"
                )
            self.tracker.trial_artifacts(trial.trial_id, trial.checkpoint)
            self.tracker.trial_ended(trial.trial_id, status="KILLED" if stopped else "FINISHED")

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            error = trial.get_error()
            reason = str(error).strip().splitlines()[-1] if error else "trial failed"
            self.tracker.trial_ended(trial.trial_id, status="FAILED", reason=reason)

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            self.tracker.discard_orphans([trial.trial_id for trial in trials])

    return MlflowTrials()


def _active_tracker(parent_run_id: str) -> StudyTracker:
    try:
        return _ACTIVE[parent_run_id]
    except KeyError:
        raise RuntimeError(
            f"apc: no tracker for study run {parent_run_id} in this process; "
            "restore a study with `apc resume NAME`"
        ) from None


def _restored_callback(
    parent_run_id: str, method: str, teacher_run_id: str, iterations: int | None
) -> Any:
    return tune_callback(
        _active_tracker(parent_run_id),
        method=method,
        teacher_run_id=teacher_run_id,
        iterations=iterations,
    )
