"""``apc report``: a study's paper-style table and plots, from MLflow (docs/design.md#apc-report).

What one report holds, for the newest study run of a study (its parent run) and the trial runs
nested under it:

- ``report.md`` / ``report.csv``: the paper's table. Per method of the study, a teacher row and
  one row per matching kind (naive = matching ``none``, EWA, SWA, SSWA, then Grad-CAM cos,
  ECCV 2024: ``MATCHING_KINDS``). A kind's row is the
  trial of the study's enqueued setting of that kind (the paper's settings, found through
  ``analysis.effect.effect_table``) when that trial FINISHED, else the FINISHED trial of that
  kind with the best ``map`` (ties: the one that started first). Columns: ``REPORT_METRICS``
  (last epoch). The Markdown rounds (``%`` metrics to 0.1, map distances and similarities to
  0.001, params to a unit); the CSV holds the values as MLflow stores them.
- ``report.html``: ``report.md`` as one page MLflow's artifact viewer renders, the plots
  inline (:mod:`analysis.report.html`).
- ``pareto_matrix.png``: every pair of the study's objectives (its spec's, as
  ``analysis.record.StudyRecord.objectives`` reads them; ``DEFAULT_OBJECTIVES`` when it names
  none) over the FINISHED trials, the Pareto
  front (``analysis.pareto.pareto_front``) highlighted; histograms on the diagonal.
- ``hypervolume.png``: the hypervolume of the FINISHED trials over the trials in start order
  (``analysis.hypervolume.hypervolume_history``; trials that did not finish count as started
  but add nothing), against ``default_reference`` over all FINISHED trials, so the curve uses
  one reference throughout.
- ``metrics_vs_beta.png``: ``map`` and ``attr_auc`` of the FINISHED trials against ``beta``
  (log axis), one series per matching kind; the table's naive row and the teacher as lines.
- further attribution methods (``evaluation.attribution_methods`` of the spec): one table per
  method in ``report.md`` (the paper's Table 8), their metrics as extra ``report.csv`` columns.
- ``pies.csv`` and a PIE section: per trial row, its PIEs (``analysis.pies``) and accuracy and
  attribution on PIEs against the other samples, from the trial's per-sample Parquet.
- ``attribution_overlays.png``: the teacher's and every trial row's Grad-CAM on the same
  evaluation images (the trials' ``attributions/attribution_maps.npz``).

The last two are written only when the trials logged those artifacts.

The modules:

- :mod:`analysis.report.rows`: which run is each row (from a ``StudyRecord`` and its trials
  table), the further methods the rows have, the PIE summary per trial row;
- :mod:`analysis.report.render`: the Markdown and CSV text;
- :mod:`analysis.report.plots`: per plot, a pure function from a table to an info object (the
  numbers to draw) and a function drawing it;
- :mod:`analysis.report.assemble`: :func:`write_report` and :func:`log_report`.

Plots use matplotlib's object API on the Agg canvas (never pyplot, never a display), imported
when a plot is drawn; MLflow is imported when the report is built. Importing this package stays
cheap.
"""

from __future__ import annotations

from analysis.layout import DEFAULT_OBJECTIVES, parent_filter
from analysis.report.assemble import (
    ARTIFACT_DIR,
    FRONT_PLOTS,
    OPTIONAL_FILES,
    REPORT_FILES,
    NoFinishedTrialsError,
    Report,
    log_front_plots,
    log_report,
    plot_overlays,
    row_overlay_maps,
    write_report,
)
from analysis.report.plots import (
    HypervolumeInfo,
    MetricsVsBetaInfo,
    OverlayInfo,
    ParetoMatrixInfo,
    draw_hypervolume,
    draw_metrics_vs_beta,
    draw_overlay_grid,
    draw_pareto_matrix,
    hypervolume_info,
    metrics_vs_beta_info,
    overlay_info,
    pareto_matrix_info,
    plot_hypervolume,
    plot_metrics_vs_beta,
    plot_pareto_matrix,
)
from analysis.report.render import (
    caption,
    format_metric,
    render_csv,
    render_markdown,
    render_method_tables,
    render_pies_csv,
    render_pies_markdown,
)
from analysis.report.rows import (
    MATCHING_KINDS,
    REPORT_METRICS,
    ReportRow,
    extra_columns,
    further_methods,
    pie_rows,
    report_rows,
    study_objectives,
)

__all__ = [
    "ARTIFACT_DIR",
    "DEFAULT_OBJECTIVES",
    "FRONT_PLOTS",
    "MATCHING_KINDS",
    "OPTIONAL_FILES",
    "REPORT_FILES",
    "REPORT_METRICS",
    "HypervolumeInfo",
    "MetricsVsBetaInfo",
    "NoFinishedTrialsError",
    "OverlayInfo",
    "ParetoMatrixInfo",
    "Report",
    "ReportRow",
    "caption",
    "draw_hypervolume",
    "draw_metrics_vs_beta",
    "draw_overlay_grid",
    "draw_pareto_matrix",
    "extra_columns",
    "format_metric",
    "further_methods",
    "hypervolume_info",
    "log_front_plots",
    "log_report",
    "metrics_vs_beta_info",
    "overlay_info",
    "parent_filter",
    "pareto_matrix_info",
    "pie_rows",
    "plot_hypervolume",
    "plot_metrics_vs_beta",
    "plot_overlays",
    "plot_pareto_matrix",
    "render_csv",
    "render_markdown",
    "render_method_tables",
    "render_pies_csv",
    "render_pies_markdown",
    "report_rows",
    "row_overlay_maps",
    "study_objectives",
    "write_report",
]
