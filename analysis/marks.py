"""The Pareto front marked on a study's trial runs, so MLflow's UI can list it
(docs/design.md#the-front-in-the-ui).

Every active trial run of the study's experiment carries :data:`~analysis.layout.PARETO_TAG`:
``true`` on the front, ``false`` off it; a run on the front also carries
:data:`~analysis.layout.PARETO_RANK_TAG`, its row in the front's table as ``apc pareto`` prints
it (1 = the first row). The UI's search ``tags.apc.pareto = "true"`` then lists the front.

The front is computed the one way ``apc pareto`` computes it: the runs a filter selects
(:func:`analysis.runs.trial_runs`), their table (:func:`analysis.runs.trials_table`) and
:func:`analysis.export.ranked_front`. The driver marks the front over the FINISHED trials of
its study run (:func:`analysis.layout.finished_trials_filter`, what ``apc run`` prints) after
every trial that ends; ``apc pareto NAME --mark`` marks the front it printed. The study run
says which (:func:`describe_front`): its objectives and filter as tags, and a description
(MLflow's note) that names them and the search that lists the front.

Only tags that change are written, so marking again after each trial costs a search and the
few runs whose place changed. MLflow is imported when a client is used, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from analysis.export import ranked_front
from analysis.layout import (
    NOTE_TAG,
    OFF_FRONT,
    ON_FRONT,
    PARETO_FILTER_TAG,
    PARETO_OBJECTIVES_TAG,
    PARETO_RANK_TAG,
    PARETO_TAG,
    Direction,
    front_filter,
    objectives_text,
)
from analysis.runs import metric_columns, trial_runs, trials_table

if TYPE_CHECKING:
    from mlflow.entities import Experiment
    from mlflow.tracking import MlflowClient

__all__ = [
    "describe_front",
    "front_note",
    "front_ranks",
    "mark_front",
    "set_marks",
    "study_front",
]


def study_front(
    client: MlflowClient,
    experiment: Experiment,
    objectives: Mapping[str, Direction],
    *,
    filter_string: str | None = None,
) -> pa.Table:
    """The ranked front ``apc pareto`` prints for the trial runs of ``experiment`` that match
    ``filter_string``; no rows when an objective was logged by none of them (``apc pareto``
    refuses such objectives: there is no front to mark)."""
    trials = trials_table(trial_runs(client, experiment, filter_string=filter_string))
    logged = metric_columns(trials)
    if trials.num_rows == 0 or any(name not in logged for name in objectives):
        return trials.slice(0, 0)
    return ranked_front(trials, objectives)


def front_ranks(front: pa.Table) -> dict[str, int]:
    """Run id -> its row (from 1) in ``front``, a :func:`analysis.export.ranked_front` table."""
    if front.num_rows == 0:
        return {}
    return {str(run_id): row for row, run_id in enumerate(front.column("run_id").to_pylist(), 1)}


def set_marks(client: MlflowClient, runs: Sequence[Any], ranks: Mapping[str, int]) -> int:
    """Tag each of ``runs`` (MLflow runs, with the tags they hold) on or off the front by
    ``ranks`` (run id -> row); writes only what differs; returns how many runs changed."""
    from mlflow.entities import RunTag

    changed = 0
    for run in runs:
        run_id = str(run.info.run_id)
        held = run.data.tags
        rank = ranks.get(run_id)
        wanted = {PARETO_TAG: ON_FRONT if rank is not None else OFF_FRONT}
        if rank is not None:
            wanted[PARETO_RANK_TAG] = str(rank)
        tags = [RunTag(key, value) for key, value in wanted.items() if held.get(key) != value]
        if tags:
            client.log_batch(run_id, tags=tags)
        stale = rank is None and PARETO_RANK_TAG in held
        if stale:
            client.delete_tag(run_id, PARETO_RANK_TAG)
        changed += bool(tags) or stale
    return changed


def mark_front(
    client: MlflowClient,
    experiment: Experiment,
    objectives: Mapping[str, Direction],
    *,
    filter_string: str | None = None,
) -> dict[str, int]:
    """Mark every active trial run of ``experiment`` on or off the front of ``objectives`` over
    the trial runs that match ``filter_string`` (:func:`study_front`); returns the ranks."""
    ranks = front_ranks(study_front(client, experiment, objectives, filter_string=filter_string))
    set_marks(client, trial_runs(client, experiment), ranks)
    return ranks


def front_note(
    *, study: str, objectives: Mapping[str, Direction], filter_string: str | None, by: str
) -> str:
    """The study run's description (Markdown): which front is marked and how to list it."""
    chosen = f"the trial runs matching `{filter_string}`" if filter_string else "all trial runs"
    again = f"apc pareto {study} --objectives {objectives_text(objectives)}"
    if filter_string:
        again += " --filter " + _shell_quote(filter_string)
    return "\n".join(
        [
            f"**Study `{study}`.** Pareto front over {objectives_text(objectives)} "
            f"(better: {', '.join(f'{n} {d}' for n, d in objectives.items())}) among {chosen}, "
            f"marked by `{by}`.",
            "",
            f"Trial runs on the front carry the tag `{PARETO_TAG}` = `{ON_FRONT}` and "
            f"`{PARETO_RANK_TAG}` (1 = the first row of `apc pareto`'s table); the others "
            f"`{PARETO_TAG}` = `{OFF_FRONT}`. To list the front, search the runs for:",
            "",
            f"    {front_filter()}",
            "",
            f"The same table in a terminal: `{again}`; to mark another front, add `--mark`. "
            "`apc report` logs the report, with the Pareto and hypervolume plots, under "
            "`report/` (`report.html` opens in the artifact viewer).",
        ]
    )


def describe_front(
    client: MlflowClient,
    parent_run_id: str,
    *,
    study: str,
    objectives: Mapping[str, Direction],
    filter_string: str | None,
    by: str,
) -> None:
    """Record on the study run which front its trial runs are marked with: the objectives and
    filter as tags, and :func:`front_note` as its description."""
    from mlflow.entities import RunTag

    note = front_note(study=study, objectives=objectives, filter_string=filter_string, by=by)
    client.log_batch(
        parent_run_id,
        tags=[
            RunTag(PARETO_OBJECTIVES_TAG, objectives_text(objectives)),
            RunTag(PARETO_FILTER_TAG, filter_string or ""),
            RunTag(NOTE_TAG, note),
        ],
    )


def _shell_quote(text: str) -> str:
    """``text`` as one shell word (filters hold quotes and spaces)."""
    import shlex

    return shlex.quote(text)
