"""A study's lifecycle: which state a name is in, whether ``apc run`` may use it, the driver lock.

States, read from what exists (never from a flag a crash could leave stale)::

    (free) --apc run--> starting --Tune's first snapshot--> tuning --all trials ended--> finished
                           |                                  |
                           | crash, kill, teacher error       | driver killed / error / outage
                           v                                  v
                     never tuned  (apc run may          stopped --apc resume--> tuning
                     start it again under its name)

- *free*: MLflow has no study run of that name and Tune's storage nothing under it.
- *starting*: a study run exists, Tune's storage has no state for it and no trial run was
  logged: the driver is in (or died in) the teacher stage. If no driver holds the lock, the
  study *never tuned*, and ``apc run`` under its name deletes those runs and starts afresh.
- *tuning* / *stopped*: Tune's storage holds the study; a driver holds the lock (tuning) or
  none does (stopped: ``apc resume NAME`` continues it).
- *finished*: the study run ended FINISHED; ``apc resume`` only delivers a leftover spool.

One driver per study: ``apc run`` and ``apc resume`` hold an exclusive ``flock`` on
``<storage>/<name>/driver.lock`` (``~/.cache/apc/<name>/`` for a ``scheme://`` storage) for as
long as they run. The kernel drops it when the process dies, so a killed driver leaves no stale
lock; the file names the holder for the message a second driver gets. For a URI storage the
lock guards the machine it lives on, not a second head.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LOCK_FILE",
    "LifecycleError",
    "StudyLockedError",
    "StudyState",
    "discard_never_tuned",
    "driver_lock",
    "run_refusals",
    "study_state",
]

LOCK_FILE = "driver.lock"


class LifecycleError(Exception):
    """The study's state forbids the command: one message per problem, each with a way out."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StudyLockedError(LifecycleError):
    """Another driver holds the study's lock; the message names it."""


@dataclass(frozen=True)
class StudyState:
    """What exists of study ``name``.

    Attributes:
        parent: the MLflow study run (an ``mlflow.entities.Run``), or None.
        deleted_experiment_id: the id of a deleted MLflow experiment of that name, or None.
        tune_state: Tune's storage holds a snapshot of the study.
        trial_runs: trial runs logged under the study run.
        spool: the file of MLflow records an earlier driver could not deliver, if any.
    """

    parent: Any
    deleted_experiment_id: str | None
    tune_state: bool
    trial_runs: int
    spool: Path | None

    @property
    def never_tuned(self) -> bool:
        """A study run that never reached Tune: ``apc run`` may start it again."""
        return self.parent is not None and not self.tune_state and self.trial_runs == 0


def study_state(tracking_uri: str, name: str, *, experiment: str, spool: Path) -> StudyState:
    """Read the state of study ``name`` from MLflow and from Tune's ``experiment`` folder/URI.

    A missing SQLite file is a free name (nothing is created)."""
    from ray import tune

    from study.tracking import PARENT_TAG, ROLE_TAG, find_study

    parent = find_study(tracking_uri, name)
    deleted = None
    trial_runs = 0
    if parent is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        trial_runs = len(
            client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' "
                f"AND tags.`{ROLE_TAG}` = 'trial'",
                max_results=1,
            )
        )
    elif _store_exists(tracking_uri):
        from mlflow.tracking import MlflowClient

        found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "deleted":
            deleted = str(found.experiment_id)
    return StudyState(
        parent=parent,
        deleted_experiment_id=deleted,
        tune_state=bool(tune.Tuner.can_restore(experiment)),
        trial_runs=trial_runs,
        spool=spool if spool.is_file() else None,
    )


def _store_exists(tracking_uri: str) -> bool:
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0]).exists()
    return True


def run_refusals(state: StudyState, *, name: str, tracking_uri: str, experiment: str) -> list[str]:
    """Why ``apc run`` may not start study ``name`` (one message per problem, with the way out)."""
    resume = f"`apc resume {name} --tracking-uri {tracking_uri}`"
    if state.deleted_experiment_id is not None:
        return [
            f"name: study {name!r} was deleted from {tracking_uri} (experiment "
            f"{state.deleted_experiment_id}); restore it with `mlflow experiments restore "
            f"--experiment-id {state.deleted_experiment_id}`, remove it for good with "
            "`mlflow gc`, or choose another --name"
        ]
    if state.parent is not None:
        if state.never_tuned:
            return []  # run again under its name: run_study replaces its runs
        return [
            f"name: study {name!r} already exists in {tracking_uri} and has run trials; "
            f"finish it with {resume}, or choose another --name"
        ]
    problems = []
    if state.tune_state:
        problems.append(
            f"name: Tune's storage already holds a study {name!r} ({experiment}) that "
            f"{tracking_uri} does not know (another MLflow store's?); choose another --name "
            "or --storage"
        )
    if state.spool is not None:
        problems.append(
            f"name: {state.spool} holds MLflow records of an earlier study {name!r} that were "
            "never delivered; deliver them with `apc resume NAME --tracking-uri URI` against "
            "the store that study ran in, or remove the file, or choose another --name"
        )
    return problems


def discard_never_tuned(tracking_uri: str, parent: Any, *, spool: Path) -> None:
    """Delete a never-tuned study's runs (study and teacher) and its spool, so that ``apc run``
    starts the name afresh; MLflow keeps deleted runs until ``mlflow gc``."""
    from mlflow.tracking import MlflowClient

    from study.tracking import PARENT_TAG

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = parent.info.run_id
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'"
    )
    for run in [*children, parent]:
        if run.info.status == "RUNNING":  # its driver died: it never ended the run
            client.set_terminated(run.info.run_id, "FAILED")
        client.delete_run(run.info.run_id)
    spool.unlink(missing_ok=True)


@contextlib.contextmanager
def driver_lock(folder: Path, *, name: str) -> Iterator[None]:
    """Hold study ``name``'s driver lock in ``folder`` (created if needed) while the block runs.

    Raises:
        StudyLockedError: another process holds it (the message names it and its lock file).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    # "a+": never truncate before the lock is ours, or the holder's line would be lost.
    handle: IO[str] = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StudyLockedError(
                [
                    f"name: study {name!r} is in use by {holder} (lock {path}); wait for that "
                    "driver to end or stop it, then try again"
                ]
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        handle.write(f"apc driver pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the lock
