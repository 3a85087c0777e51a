"""The report's text: the table as Markdown and CSV, the further methods' and PIE tables, and
``report.md`` around them.

The Markdown rounds (``%`` metrics to 0.1, map distances and similarities to 0.001, params to a
unit); the CSVs hold the values as MLflow stores them (``repr``), empty cells for none.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Final

from analysis.layout import Direction
from analysis.pies import PieSummary
from analysis.report.rows import REPORT_METRICS, ReportRow, extra_columns, further_methods
from trainables.metric_names import ATTRIBUTION_METHOD_LABELS, ATTRIBUTION_METRICS, method_metric

__all__ = [
    "caption",
    "format_metric",
    "further_sections",
    "hypervolume_sentence",
    "render_csv",
    "render_markdown",
    "render_method_tables",
    "render_pies_csv",
    "render_pies_markdown",
    "report_markdown",
    "short",
]

#: PIE statistics shown in the Markdown (all of them go to pies.csv).
_PIE_SHOWN: Final = ("accuracy", "teacher_accuracy", "attr_auc", "attr_cos")
_CSV_COLUMNS: Final = ("method", "row", "chosen", "setting", "trial", "run_id", *REPORT_METRICS)
_MD_COLUMNS: Final = ("method", "row", "setting", "chosen", "trial", *REPORT_METRICS)
_PERCENT: Final = frozenset({"map", "f1", "attr_auc", "point_acc"})


def short(value: float) -> str:
    """A number in a sentence or a plot's note: four significant digits."""
    return f"{value:.4g}"


def format_metric(name: str, value: float | None) -> str:
    """A metric as the Markdown table shows it: ``-`` when missing or NaN."""
    if value is None or math.isnan(value):
        return "-"
    if name == "params":
        return f"{value:,.0f}"
    if name in _PERCENT:
        return f"{value:.1f}"
    return f"{value:.3f}"


def caption(study: str, parent_run_id: str) -> str:
    """The table's caption: which run each row is and what the columns measure."""
    return (
        f"**Table.** Study `{study}` (study run `{parent_run_id}`), last-epoch metrics. Per "
        "method, the teacher and one row per matching kind (naive = no matching): the trial of "
        "the study's enqueued setting of that kind when it FINISHED, otherwise the FINISHED "
        "trial of that kind with the best `map` (ties: the earliest). `map`, `f1`, `attr_auc`, "
        "`point_acc` in %; `attr_auc` and `point_acc` score Grad-CAM maps against the "
        "ground-truth masks over the (image, class) pairs the model predicts correctly; "
        "`attr_cos` and `attr_l2` compare them with the teacher's maps; `params` counts "
        "parameters."
    )


def render_markdown(rows: Sequence[ReportRow]) -> str:
    """``rows`` as a Markdown table (numbers rounded by ``format_metric``)."""
    lines = ["| " + " | ".join(_MD_COLUMNS) + " |", "|" + "---|" * len(_MD_COLUMNS)]
    for r in rows:
        cells = [r.method, r.row, r.setting or "-", r.chosen, r.trial or "-"]
        cells += [format_metric(m, r.metrics.get(m)) for m in REPORT_METRICS]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[ReportRow]) -> str:
    """``rows`` as CSV with a header; numbers unrounded (``repr``), empty cells for none.

    Columns: ``_CSV_COLUMNS`` then :func:`analysis.report.rows.extra_columns`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = extra_columns(rows)
    writer.writerow([*_CSV_COLUMNS, *extra])
    for r in rows:
        metrics = [
            "" if (v := r.metrics.get(m)) is None or math.isnan(v) else repr(v)
            for m in (*REPORT_METRICS, *extra)
        ]
        writer.writerow(
            [r.method, r.row, r.chosen, r.setting, r.trial or "", r.run_id or "", *metrics]
        )
    return buffer.getvalue()


def render_method_tables(rows: Sequence[ReportRow]) -> str:
    """One Markdown table per further attribution method (the paper's Table 8): the rows'
    ``attr_auc_<method>``... under the plain metric names; empty without further methods."""
    parts = []
    for method in further_methods(rows):
        header = ("method", "row", "trial", *ATTRIBUTION_METRICS)
        lines = [
            f"### {ATTRIBUTION_METHOD_LABELS[method]}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for r in rows:
            cells = [r.method, r.row, r.trial or "-"] + [
                format_metric(m, r.metrics.get(method_metric(m, method)))
                for m in ATTRIBUTION_METRICS
            ]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _pie_cell(name: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    return (
        f"{value:.1f}" if name in ("accuracy", "teacher_accuracy", "attr_auc") else f"{value:.3f}"
    )


def render_pies_markdown(pies: Sequence[tuple[ReportRow, PieSummary]]) -> str:
    """PIEs per trial row, and accuracy and attribution on PIEs against the other samples."""
    header = ["method", "row", "trial", "samples", "PIEs", "pie %"]
    header += [f"{name} PIE / rest" for name in _PIE_SHOWN]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r, summary in pies:
        cells = [
            r.method,
            r.row,
            r.trial or "-",
            str(summary.samples),
            str(summary.pies),
            f"{100 * summary.pie_fraction:.1f}",
        ]
        for name in _PIE_SHOWN:
            pie, rest = summary.pie.get(name, math.nan), summary.rest.get(name, math.nan)
            cells.append(f"{_pie_cell(name, pie)} / {_pie_cell(name, rest)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_pies_csv(pies: Sequence[tuple[ReportRow, PieSummary]]) -> str:
    """Every PIE statistic of every trial row, unrounded: ``pie_<stat>`` and ``rest_<stat>``."""
    stats: list[str] = []
    for _, summary in pies:
        stats += [name for name in summary.pie if name not in stats]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    sides = ("pie", "rest")
    writer.writerow(
        [
            "method",
            "row",
            "trial",
            "run_id",
            "samples",
            "pies",
            "pie_fraction",
            *(f"{side}_{name}" for name in stats for side in sides),
        ]
    )
    for r, summary in pies:
        groups = {"pie": summary.pie, "rest": summary.rest}
        values = [groups[side].get(n, math.nan) for n in stats for side in sides]
        writer.writerow(
            [
                r.method,
                r.row,
                r.trial or "",
                r.run_id or "",
                summary.samples,
                summary.pies,
                repr(summary.pie_fraction),
                *("" if math.isnan(v) else repr(v) for v in values),
            ]
        )
    return buffer.getvalue()


def hypervolume_sentence(
    history: Sequence[tuple[int, float]], reference: Mapping[str, float] | None
) -> str:
    """What ``report.md`` says of the hypervolume: its last value and the reference point."""
    if reference is None:
        return "No FINISHED trial has a finite value of every objective: no hypervolume."
    where = ", ".join(f"{n} {short(v)}" for n, v in reference.items())
    return (
        f"Hypervolume after {len(history)} trials: {short(history[-1][1])} "
        f"(reference: {where}; FINISHED trials only)."
    )


def further_sections(
    rows: Sequence[ReportRow], pies: Sequence[tuple[ReportRow, PieSummary]], drawn: Sequence[str]
) -> list[str]:
    """The report's Markdown after the plots: attribution methods, PIEs, overlays."""
    lines: list[str] = []
    methods = render_method_tables(rows)
    if methods:
        lines += [
            "## Further attribution methods",
            "",
            "The rows' maps by each further method (measured with a trial's last epoch; "
            "the teacher's once), scored as the Grad-CAM table's.",
            "",
            methods,
        ]
    lines += ["## PIEs", ""]
    if pies:
        lines += [
            "Samples whose predicted class set differs from the teacher's (PIEs), per trial row "
            "of the table, and how the trial and the teacher fare on them against the other "
            "samples (accuracy: every label right, in %; attr_auc in %). Every statistic is in "
            "pies.csv.",
            "",
            render_pies_markdown(pies),
        ]
    else:
        lines += [
            "No trial row of the table logged per-sample results (evaluation/per_sample.parquet).",
            "",
        ]
    if drawn:
        lines += [
            "## Attribution overlays",
            "",
            f"Grad-CAM of the teacher and of the {', '.join(drawn)} trials on the same "
            "images, for the teacher's top-1 class.",
            "",
            "![Teacher and student attribution overlays](attribution_overlays.png)",
            "",
        ]
    return lines


def report_markdown(
    *,
    study: str,
    parent_run_id: str,
    trials: int,
    finished: int,
    table: str,
    objectives: Mapping[str, Direction],
    front: int,
    history: Sequence[tuple[int, float]],
    reference: Mapping[str, float] | None,
    rows: Sequence[ReportRow],
    pies: Sequence[tuple[ReportRow, PieSummary]],
    drawn: Sequence[str],
) -> str:
    """``report.md``: the table (``table``: caption and Markdown table), the plots with their
    sentences, then :func:`further_sections`. ``trials`` and ``finished`` count trial runs;
    ``front`` the FINISHED ones on the Pareto front; ``history`` and ``reference`` are the
    hypervolume plot's; ``drawn`` the overlay columns after the teacher's."""
    spec = ", ".join(f"{n}:{d}" for n, d in objectives.items())
    return "\n".join(
        [
            f"# Report: study `{study}`",
            "",
            f"Study run `{parent_run_id}`: {trials} trial runs, {finished} "
            "FINISHED. Written by `apc report`.",
            "",
            table,
            "## Pareto front",
            "",
            f"{front} of {finished} FINISHED trials are on the Pareto front of {spec}.",
            "",
            "![Pareto front, every pair of objectives](pareto_matrix.png)",
            "",
            "## Hypervolume over trials",
            "",
            hypervolume_sentence(history, reference),
            "",
            "![Hypervolume over trials in start order](hypervolume.png)",
            "",
            "## map and attr_auc against beta",
            "",
            "![map and attr_auc against beta](metrics_vs_beta.png)",
            "",
            *further_sections(rows, pies, drawn),
        ]
    )
