"""A report put together: read the study (``analysis.record.StudyRecord``), choose the rows,
draw the plots, write the files (:func:`write_report`) and log them to the study run
(:func:`log_report`)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pyarrow as pa
import pyarrow.compute as pc

from analysis.layout import MAPS_ARTIFACT, REPORT_DIR, Direction, parent_filter
from analysis.record import StudyRecord, load_study_record
from analysis.report.html import write_html
from analysis.report.plots import (
    draw_overlay_grid,
    overlay_info,
    plot_hypervolume,
    plot_metrics_vs_beta,
    plot_pareto_matrix,
)
from analysis.report.render import (
    caption,
    render_csv,
    render_markdown,
    render_pies_csv,
    report_markdown,
)
from analysis.report.rows import FINISHED, ReportRow, pie_rows, rows_of
from analysis.runs import RunsQueryError, load_trials, tracking_client

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from trainables.overlays import OverlayMaps

__all__ = [
    "ARTIFACT_DIR",
    "FRONT_PLOTS",
    "OPTIONAL_FILES",
    "REPORT_FILES",
    "NoFinishedTrialsError",
    "Report",
    "log_front_plots",
    "log_report",
    "plot_overlays",
    "row_overlay_maps",
    "write_report",
]

#: Where the report goes in the parent run's artifacts (``analysis.layout.REPORT_DIR``).
ARTIFACT_DIR: Final = REPORT_DIR
#: The files of a report, in the order they are written.
REPORT_FILES: Final[tuple[str, ...]] = (
    "report.md",
    "report.csv",
    "report.html",
    "pareto_matrix.png",
    "hypervolume.png",
    "metrics_vs_beta.png",
    "pies.csv",
    "attribution_overlays.png",
)
#: The plots ``apc run`` logs to the study run when it ends (``apc report`` writes them again).
FRONT_PLOTS: Final[tuple[str, ...]] = ("pareto_matrix.png", "hypervolume.png")
#: Files written only when the table's trials logged what they need (per-sample results,
#: overlay maps: ``trainables.trial_artifacts``).
OPTIONAL_FILES: Final = frozenset({"pies.csv", "attribution_overlays.png"})


class NoFinishedTrialsError(RunsQueryError):
    """The study run has no FINISHED trial run to report on."""


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote into ``folder`` and what it found."""

    study: str
    parent_run_id: str
    folder: Path
    files: tuple[Path, ...]
    rows: tuple[ReportRow, ...]
    objectives: Mapping[str, Direction]
    trials: int
    finished: int
    #: Rows of ``pareto_front`` over the FINISHED trials: the points highlighted.
    front: int
    #: ``(k, hypervolume of the first k trials)``; empty when no trial has every objective.
    hypervolume: tuple[tuple[int, float], ...]
    reference: Mapping[str, float] | None
    #: The table as printed: caption, then the Markdown table.
    table: str


def row_overlay_maps(
    tracking_uri: str, rows: Sequence[ReportRow], *, client: MlflowClient | None = None
) -> dict[str, OverlayMaps]:
    """The overlay maps (``attributions/attribution_maps.npz``) of each trial row's run that
    logged them, by run id (``client``: one open on ``tracking_uri``)."""
    from trainables.overlays import load_overlay_maps  # torch: imported when used

    if client is None:
        client = tracking_client(tracking_uri)
    found: dict[str, OverlayMaps] = {}
    folder = MAPS_ARTIFACT.rpartition("/")[0]
    with tempfile.TemporaryDirectory() as scratch:
        for r in rows:
            if r.row == "teacher" or r.run_id is None or r.run_id in found:
                continue
            if MAPS_ARTIFACT not in [a.path for a in client.list_artifacts(r.run_id, folder)]:
                continue
            found[r.run_id] = load_overlay_maps(
                client.download_artifacts(r.run_id, MAPS_ARTIFACT, scratch)
            )
    return found


def plot_overlays(
    tracking_uri: str,
    rows: Sequence[ReportRow],
    path: Path,
    *,
    title: str,
    client: MlflowClient | None = None,
) -> list[str]:
    """Teacher-vs-student overlays of the trial rows side by side, on the same images.

    Uses each row's ``attributions/attribution_maps.npz``; a row whose maps show other images
    or classes than the first row's (another teacher or split) is left out
    (:func:`analysis.report.plots.overlay_info`). Returns the columns drawn after the
    teacher's (none: nothing is written).
    """
    info = overlay_info(rows, row_overlay_maps(tracking_uri, rows, client=client))
    if info is None:
        return []
    draw_overlay_grid(info, path, title=title)
    return info.drawn


def write_report(
    tracking_uri: str,
    study: str,
    *,
    parent_run_id: str,
    folder: Path,
    trials: pa.Table | None = None,
    record: StudyRecord | None = None,
) -> Report:
    """Build the report of the study run ``parent_run_id`` into ``folder`` (created).

    ``trials`` is the ``load_trials`` table of that run's trials (loaded when None);
    ``record`` the study as :func:`analysis.record.load_study_record` read it for that run
    (read when None), whose client fetches everything else.
    Raises ``NoFinishedTrialsError`` before writing anything when no trial FINISHED.
    """
    if record is not None and record.parent_run_id != parent_run_id:
        raise ValueError(
            f"record: must be of study run {parent_run_id}, got {record.parent_run_id}"
        )
    if trials is None:
        trials = (
            record.table()
            if record is not None
            else load_trials(tracking_uri, study, filter_string=parent_filter(parent_run_id))
        )
    finished = trials.filter(pc.equal(trials.column("status"), FINISHED))
    if finished.num_rows == 0:
        counts: dict[str, int] = {}
        for status in trials.column("status").to_pylist():
            counts[str(status)] = counts.get(str(status), 0) + 1
        seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        raise NoFinishedTrialsError(
            f"study {study!r}: no FINISHED trial under its study run {parent_run_id} to report "
            f"on (trial runs: {seen})"
        )
    if record is None:
        record = load_study_record(study, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    objectives = record.objectives
    rows = rows_of(record, trials)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in REPORT_FILES}
    front = plot_pareto_matrix(finished, objectives, paths["pareto_matrix.png"], title=study)
    history, reference = plot_hypervolume(trials, objectives, paths["hypervolume.png"], title=study)
    plot_metrics_vs_beta(finished, rows, paths["metrics_vs_beta.png"], title=study)
    pies = pie_rows(tracking_uri, rows, client=record.client)
    if pies:
        paths["pies.csv"].write_text(render_pies_csv(pies), "utf-8")
    drawn = plot_overlays(
        tracking_uri,
        rows,
        paths["attribution_overlays.png"],
        title=f"{study}: Grad-CAM of the teacher's top-1 class",
        client=record.client,
    )
    written = [
        name
        for name in REPORT_FILES
        if name not in OPTIONAL_FILES
        or (name == "pies.csv" and pies)
        or (name == "attribution_overlays.png" and drawn)
    ]
    table = caption(study, parent_run_id) + "\n\n" + render_markdown(rows)
    markdown = report_markdown(
        study=study,
        parent_run_id=parent_run_id,
        trials=trials.num_rows,
        finished=finished.num_rows,
        table=table,
        objectives=objectives,
        front=front,
        history=history,
        reference=reference,
        rows=rows,
        pies=pies,
        drawn=drawn,
    )
    paths["report.md"].write_text(markdown, "utf-8")
    paths["report.csv"].write_text(render_csv(rows), "utf-8")
    write_html(paths["report.md"], paths["report.html"], title=f"Report: study {study}")
    return Report(
        study=study,
        parent_run_id=parent_run_id,
        folder=folder,
        files=tuple(paths[name] for name in written),
        rows=tuple(rows),
        objectives=objectives,
        trials=trials.num_rows,
        finished=finished.num_rows,
        front=front,
        hypervolume=tuple(history),
        reference=reference,
        table=table,
    )


def log_report(tracking_uri: str, report: Report, *, client: MlflowClient | None = None) -> str:
    """Log the report's files to its study run under ``report/``; returns their artifact URI.

    ``client``: one open on ``tracking_uri`` (e.g. the ``StudyRecord``'s the report read).
    """
    if client is None:
        client = tracking_client(tracking_uri)
    for path in report.files:
        client.log_artifact(report.parent_run_id, str(path), ARTIFACT_DIR)
    run = client.get_run(report.parent_run_id)
    return f"{str(run.info.artifact_uri).rstrip('/')}/{ARTIFACT_DIR}"


def log_front_plots(record: StudyRecord, *, trials: pa.Table | None = None) -> list[str]:
    """Draw the Pareto matrix and the hypervolume plot (:data:`FRONT_PLOTS`, as
    :func:`write_report` draws them) of ``record``'s study run and log them to it under
    ``report/``; returns their artifact paths (none when no trial FINISHED).

    What ``apc run`` leaves on the study run when it ends, without the rest of the report
    (which reads every row's artifacts).
    """
    if trials is None:
        trials = record.table()
    finished = trials.filter(pc.equal(trials.column("status"), FINISHED))
    if finished.num_rows == 0:
        return []
    with tempfile.TemporaryDirectory(prefix="apc-plots-") as scratch:
        folder = Path(scratch)
        matrix, volume = (folder / name for name in FRONT_PLOTS)
        plot_pareto_matrix(finished, record.objectives, matrix, title=record.name)
        plot_hypervolume(trials, record.objectives, volume, title=record.name)
        for path in (matrix, volume):
            record.client.log_artifact(record.parent_run_id, str(path), ARTIFACT_DIR)
    return [f"{ARTIFACT_DIR}/{name}" for name in FRONT_PLOTS]
