"""The report's plots, each in two steps as Optuna's ``visualization`` splits them
(``_hypervolume_history.py`` computes, ``matplotlib/`` draws): a pure function computes an
info object (a frozen dataclass with the numbers to draw) from a trials table, and a separate
function draws that object with matplotlib. The info functions need neither MLflow nor
matplotlib, so the numbers of a plot are tested from hand-built tables.

- :func:`pareto_matrix_info` / :func:`draw_pareto_matrix`: every pair of the study's
  objectives over the FINISHED trials, the Pareto front (``analysis.pareto.pareto_front``)
  highlighted; histograms on the diagonal.
- :func:`hypervolume_info` / :func:`draw_hypervolume`: the hypervolume of the FINISHED trials
  over the trials in start order (``analysis.hypervolume.hypervolume_history``; trials that did
  not finish count as started but add nothing), against ``default_reference`` over all
  FINISHED trials, so the curve uses one reference throughout.
- :func:`metrics_vs_beta_info` / :func:`draw_metrics_vs_beta`: ``map`` and ``attr_auc`` of the
  FINISHED trials against ``beta`` (log axis), one series per matching kind (and method); the
  table's naive rows and the teacher as lines.
- :func:`overlay_info` / :func:`draw_overlay_grid`: the teacher's and every trial row's
  Grad-CAM on the same evaluation images, drawn by :func:`draw_overlays`, the one drawing of
  overlay maps (:func:`draw_trial_overlay` draws a trial's own teacher-vs-student grid from its
  saved maps; the driver calls it when it logs them).

``plot_pareto_matrix``, ``plot_hypervolume`` and ``plot_metrics_vs_beta`` do both steps and
write a PNG. Plots use matplotlib's object API on the Agg canvas (never pyplot, never a
display), imported when a plot is drawn.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from analysis.hypervolume import default_reference, hypervolume_history
from analysis.layout import Direction
from analysis.pareto import pareto_front
from analysis.report.render import short
from analysis.report.rows import FINISHED, MATCHING_KINDS, ReportRow, kind_of
from analysis.runs import KIND, NAME

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from trainables.overlays import OverlayMaps

__all__ = [
    "BETA_METRICS",
    "BetaLine",
    "BetaSeries",
    "HypervolumeInfo",
    "MetricsVsBetaInfo",
    "OverlayInfo",
    "ParetoMatrixInfo",
    "draw_hypervolume",
    "draw_metrics_vs_beta",
    "draw_overlay_grid",
    "draw_overlays",
    "draw_pareto_matrix",
    "draw_trial_overlay",
    "hypervolume_info",
    "metrics_vs_beta_info",
    "overlay_info",
    "pareto_matrix_info",
    "plot_hypervolume",
    "plot_metrics_vs_beta",
    "plot_pareto_matrix",
]

#: The metrics drawn against beta, one panel each, in order.
BETA_METRICS: Final = ("map", "attr_auc")
_KIND_COLORS: Final = {
    "none": "0.45",
    "ewa": "tab:blue",
    "swa": "tab:orange",
    "sswa": "tab:green",
    "gradcam_cos": "tab:purple",  # not red: the Pareto front's colour
}
_METHOD_MARKERS: Final = ("o", "s", "^", "D", "v", "P")
_FRONT_COLOR: Final = "tab:red"


# Table columns as arrays.


def _floats(table: pa.Table, name: str) -> npt.NDArray[np.float64]:
    """A column as float64, NaN for nulls, non-numbers and an absent column."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    out = np.full(table.num_rows, np.nan)
    for i, value in enumerate(table.column(name).to_pylist()):
        if isinstance(value, int | float):
            out[i] = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                out[i] = float(value)
    return out


def _with_objectives(table: pa.Table, objectives: Mapping[str, Direction]) -> pa.Table:
    """``table`` with an all-null float64 column for each objective it lacks."""
    for name in objectives:
        if name not in table.column_names:
            meta = {KIND: b"metric", NAME: name.encode()}
            column = pa.nulls(table.num_rows, pa.float64())
            table = table.append_column(pa.field(name, pa.float64(), metadata=meta), column)
    return table


def _log_scale(values: npt.NDArray[np.float64]) -> bool:
    """Log axis for positive values spanning two decades or more (sizes, FLOPs)."""
    finite = values[np.isfinite(values)]
    return bool(finite.size and finite.min() > 0 and finite.max() / finite.min() >= 100)


def _spec(objectives: Mapping[str, Direction]) -> str:
    return ", ".join(f"{n}:{d}" for n, d in objectives.items())


# Drawing helpers.


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure: Figure, path: Path) -> None:
    # Figure.savefig picks the Agg canvas for PNG; no pyplot, no display.
    figure.savefig(path, format="png")


def _objective_label(name: str, direction: Direction) -> str:
    return f"{name} ({'higher' if direction == 'max' else 'lower'} is better)"


def _compact_ticks(axes: Axes, values: npt.NDArray[np.float64], which: str) -> None:
    """Engineering tick labels (``150k``, ``2M``) for a linear axis of large values."""
    from matplotlib.ticker import EngFormatter

    finite = np.abs(values[np.isfinite(values)])
    axis = axes.xaxis if which == "x" else axes.yaxis
    if finite.size and finite.max() >= 1e4 and axis.get_scale() == "linear":
        axis.set_major_formatter(EngFormatter(sep=""))


def _empty(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=9)


# The Pareto matrix.


@dataclass(frozen=True)
class ParetoMatrixInfo:
    """What the Pareto matrix draws.

    Attributes:
        objectives: the objectives, in the matrix's order (rows and columns).
        values: per objective, its value of each trial (NaN: missing), in the table's order.
        on_front: per trial, whether it is on the Pareto front.
        log_scale: per objective, whether its axis is logarithmic.
        front: how many trials are on the front (the rows of ``pareto_front``).
        trials: how many trials the table holds.
    """

    objectives: Mapping[str, Direction]
    values: Mapping[str, npt.NDArray[np.float64]]
    on_front: npt.NDArray[np.bool_]
    log_scale: Mapping[str, bool]
    front: int
    trials: int


def pareto_matrix_info(finished: pa.Table, objectives: Mapping[str, Direction]) -> ParetoMatrixInfo:
    """The Pareto matrix of ``finished`` (one row per trial, a ``run_id`` column): the rows of
    ``pareto_front(finished, objectives)`` are on the front (a row missing an objective never
    is); an objective the table lacks is all missing."""
    table = _with_objectives(finished, objectives)
    front = pareto_front(table, objectives)
    front_ids = set(front.column("run_id").to_pylist())
    on_front = np.array([rid in front_ids for rid in table.column("run_id").to_pylist()], bool)
    values = {name: _floats(table, name) for name in objectives}
    return ParetoMatrixInfo(
        objectives=dict(objectives),
        values=values,
        on_front=on_front,
        log_scale={name: _log_scale(values[name]) for name in objectives},
        front=int(front.num_rows),
        trials=table.num_rows,
    )


def draw_pareto_matrix(info: ParetoMatrixInfo, path: Path, *, title: str = "") -> None:
    """``info`` as a scatter matrix with histograms on the diagonal, a PNG at ``path``."""
    from matplotlib.ticker import MaxNLocator

    objectives, values, logs, on_front = info.objectives, info.values, info.log_scale, info.on_front
    names = list(objectives)
    k = len(names)
    figure = _figure(2.7 * k + 0.6, 2.7 * k + 0.8)
    grid = figure.subplots(k, k, squeeze=False)
    for i, y_name in enumerate(names):
        for j, x_name in enumerate(names):
            axes: Axes = grid[i][j]
            x = values[x_name]
            if logs[x_name]:
                axes.set_xscale("log")
            if i == j:
                finite = np.isfinite(x)
                if not finite.any():
                    _empty(axes, f"no {x_name} values")
                else:
                    low, high = float(x[finite].min()), float(x[finite].max())
                    # One set of edges for both, so the front's bars sit inside the others.
                    edges = (
                        np.geomspace(low, high, 13)
                        if logs[x_name] and high > low
                        else np.histogram_bin_edges(x[finite], bins=12)
                    ).tolist()
                    axes.hist(x[finite], bins=edges, color="0.75", label="all FINISHED")
                    axes.hist(
                        x[finite & on_front],
                        bins=edges,
                        color=_FRONT_COLOR,
                        alpha=0.8,
                        label="Pareto front",
                    )
                    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
                axes.set_ylabel("trials" if j == 0 else "")
            else:
                y = values[y_name]
                if logs[y_name]:
                    axes.set_yscale("log")
                rest = ~on_front
                axes.scatter(x[rest], y[rest], s=22, color="0.6", label="dominated")
                axes.scatter(
                    x[on_front],
                    y[on_front],
                    s=46,
                    color=_FRONT_COLOR,
                    edgecolors="black",
                    linewidths=0.6,
                    label="Pareto front",
                    zorder=3,
                )
                if j == 0:
                    axes.set_ylabel(_objective_label(y_name, objectives[y_name]), fontsize=8)
            if i == k - 1:
                axes.set_xlabel(_objective_label(x_name, objectives[x_name]), fontsize=8)
            _compact_ticks(axes, x, "x")
            if i != j:
                _compact_ticks(axes, values[y_name], "y")
            axes.tick_params(labelsize=7)
            axes.grid(True, alpha=0.3)
    head = f"{title}: " if title else ""
    figure.suptitle(
        f"{head}{info.front} of {info.trials} FINISHED trials on the Pareto front of "
        f"{_spec(objectives)}",
        fontsize=10,
    )
    handles, labels = grid[0][-1].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    _save(figure, path)


def plot_pareto_matrix(
    finished: pa.Table, objectives: Mapping[str, Direction], path: Path, *, title: str = ""
) -> int:
    """Scatter matrix of ``objectives`` over ``finished`` (one row per trial), the Pareto
    front highlighted; histograms on the diagonal. Writes a PNG to ``path``.

    Returns the number of trials highlighted: the rows of ``pareto_front(finished,
    objectives)`` (rows with a missing objective are never on it).
    """
    info = pareto_matrix_info(finished, objectives)
    draw_pareto_matrix(info, path, title=title)
    return info.front


# The hypervolume history.


@dataclass(frozen=True)
class HypervolumeInfo:
    """What the hypervolume plot draws.

    Attributes:
        objectives: the objectives the hypervolume is of.
        history: ``(k, hypervolume of the first k trials)`` for k = 1 .. ``trials``; empty
            when no FINISHED trial has every objective.
        reference: the reference point, or None (and an empty history).
        improved: the indices into ``history`` where the hypervolume grew.
        trials: the trials in start order (every status).
        finished: how many of them FINISHED (the ones that count).
    """

    objectives: Mapping[str, Direction]
    history: tuple[tuple[int, float], ...]
    reference: Mapping[str, float] | None
    improved: tuple[int, ...]
    trials: int
    finished: int


def hypervolume_info(trials: pa.Table, objectives: Mapping[str, Direction]) -> HypervolumeInfo:
    """The hypervolume over ``trials`` (a ``load_trials`` table: a ``status`` column, rows in
    start order), counting FINISHED trials only, against ``default_reference`` over the
    FINISHED trials."""
    table = _with_objectives(trials, objectives)
    finished = np.array([s == FINISHED for s in table.column("status").to_pylist()], bool)
    columns = {}
    for name in objectives:
        column = _floats(table, name)
        column[~finished] = np.nan  # started, never measured: adds nothing
        columns[name] = column
    points = pa.table(columns) if columns else pa.table({})
    history: list[tuple[int, float]] = []
    reference: dict[str, float] | None
    try:
        reference = default_reference(points, objectives)
    except ValueError:
        reference = None
    if reference is not None:
        history = hypervolume_history(points, objectives, reference=reference)
    volumes = [v for _, v in history]
    improved = tuple(i for i, v in enumerate(volumes) if v > (volumes[i - 1] if i else 0.0))
    return HypervolumeInfo(
        objectives=dict(objectives),
        history=tuple(history),
        reference=reference,
        improved=improved,
        trials=table.num_rows,
        finished=int(finished.sum()),
    )


def draw_hypervolume(info: HypervolumeInfo, path: Path, *, title: str = "") -> None:
    """``info`` as a step curve over the trials, the trials that grew it marked; a PNG."""
    figure = _figure(7.0, 4.2)
    axes: Axes = figure.subplots()
    if info.reference is None:
        _empty(axes, "no FINISHED trial has a finite value of every objective")
    else:
        ks = [k for k, _ in info.history]
        volumes = [v for _, v in info.history]
        axes.step(ks, volumes, where="post", color="tab:blue", label="hypervolume")
        axes.scatter(
            [ks[i] for i in info.improved],
            [volumes[i] for i in info.improved],
            color="tab:blue",
            s=24,
            zorder=3,
            label="a trial that grew it",
        )
        axes.set_xlim(0.5, max(ks) + 0.5)
        axes.set_ylim(bottom=0)
        where = ", ".join(f"{n} {short(v)}" for n, v in info.reference.items())
        axes.text(
            0.99,
            0.03,
            f"reference: {where}\nfinal: {short(volumes[-1])}",
            transform=axes.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
        )
        axes.legend(loc="upper left", fontsize=8)
    head = f"{title}: " if title else ""
    axes.set_title(f"{head}hypervolume of {_spec(info.objectives)}", fontsize=10)
    axes.set_xlabel(f"trials in start order ({info.finished} of {info.trials} FINISHED count)")
    axes.set_ylabel("hypervolume (product of the objectives' units)")
    axes.grid(True, alpha=0.3)
    _save(figure, path)


def plot_hypervolume(
    trials: pa.Table, objectives: Mapping[str, Direction], path: Path, *, title: str = ""
) -> tuple[list[tuple[int, float]], dict[str, float] | None]:
    """Hypervolume over the trials in start order (the rows of ``trials``, a ``load_trials``
    table), counting FINISHED trials only, against ``default_reference`` over all FINISHED
    trials. Writes a PNG to ``path``; returns the history and the reference (None, and an
    empty history, when no FINISHED trial has every objective)."""
    info = hypervolume_info(trials, objectives)
    draw_hypervolume(info, path, title=title)
    reference = dict(info.reference) if info.reference is not None else None
    return list(info.history), reference


# Metrics against beta.


@dataclass(frozen=True)
class BetaSeries:
    """The trials of one matching kind (and method) in one panel, as points."""

    metric: str
    kind: str
    method: str
    label: str
    color: str
    marker: str
    beta: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]


@dataclass(frozen=True)
class BetaLine:
    """A table row (the teacher, a naive row) as a horizontal line in one panel."""

    metric: str
    label: str
    color: str
    style: str
    value: float


@dataclass(frozen=True)
class MetricsVsBetaInfo:
    """What the metrics-against-beta plot draws.

    Attributes:
        metrics: one panel per metric (:data:`BETA_METRICS`).
        series: the points, per panel in the order of the matching kinds (``MATCHING_KINDS``,
            then unknown kinds sorted), then of the methods (first seen).
        lines: the teacher's and the naive rows' values, per panel.
        plotted: the trials with a positive ``beta`` and a ``map`` (the first panel's points).
        left_out: the trials without a positive ``beta`` (no place on a log axis).
        trials: the FINISHED trials.
    """

    metrics: tuple[str, ...]
    series: tuple[BetaSeries, ...]
    lines: tuple[BetaLine, ...]
    plotted: int
    left_out: int
    trials: int

    def shown(self, metric: str) -> bool:
        """Whether the panel of ``metric`` has any point."""
        return any(s.metric == metric for s in self.series)


def metrics_vs_beta_info(finished: pa.Table, rows: Sequence[ReportRow]) -> MetricsVsBetaInfo:
    """``map`` and ``attr_auc`` of ``finished`` (one row per FINISHED trial) against ``beta``,
    grouped by matching kind (``matching``, ``none`` when missing) and ``method``; the teacher
    row and each method's naive row of ``rows`` as lines. Trials without a positive finite
    ``beta`` (naive ones, beta 0) or without the metric are left out of a panel."""
    beta = _floats(finished, "beta")
    kinds = (
        [kind_of({"matching": m}) for m in finished.column("matching").to_pylist()]
        if "matching" in finished.column_names
        else ["none"] * finished.num_rows
    )
    methods = (
        [str(m) for m in finished.column("method").to_pylist()]
        if "method" in finished.column_names
        else ["-"] * finished.num_rows
    )
    distinct_methods = list(dict.fromkeys(methods))
    several = len(distinct_methods) > 1
    usable = np.isfinite(beta) & (beta > 0)
    kind_names = list(MATCHING_KINDS) + sorted(set(kinds) - set(MATCHING_KINDS))
    series: list[BetaSeries] = []
    lines: list[BetaLine] = []
    plotted = 0
    for column, metric in enumerate(BETA_METRICS):
        values = _floats(finished, metric)
        shown = usable & np.isfinite(values)
        if column == 0:
            plotted = int(shown.sum())
        for kind in kind_names:
            for m, method in enumerate(distinct_methods):
                mask = (
                    shown
                    & np.array([k == kind for k in kinds])
                    & np.array([x == method for x in methods])
                )
                if not mask.any():
                    continue
                label = MATCHING_KINDS.get(kind, kind)
                if several:
                    label += f" ({method})"
                series.append(
                    BetaSeries(
                        metric=metric,
                        kind=kind,
                        method=method,
                        label=label,
                        color=_KIND_COLORS.get(kind, f"C{4 + kind_names.index(kind)}"),
                        marker=_METHOD_MARKERS[m % len(_METHOD_MARKERS)],
                        beta=beta[mask],
                        values=values[mask],
                    )
                )
        # One teacher line (the same run heads every method's block), one naive line a method.
        teacher = next((r for r in rows if r.row == "teacher"), None)
        candidates = [(teacher, "teacher", "black", ":")] if teacher is not None else []
        for row in rows:
            if row.row == "naive":
                label = "naive (table row)" + (f" ({row.method})" if several else "")
                candidates.append((row, label, _KIND_COLORS["none"], "--"))
        for row, label, color, style in candidates:
            value = row.metrics.get(metric)
            if value is not None and math.isfinite(value):
                lines.append(BetaLine(metric, label, color, style, value))
    return MetricsVsBetaInfo(
        metrics=BETA_METRICS,
        series=tuple(series),
        lines=tuple(lines),
        plotted=plotted,
        left_out=finished.num_rows - int(usable.sum()),
        trials=finished.num_rows,
    )


def draw_metrics_vs_beta(info: MetricsVsBetaInfo, path: Path, *, title: str = "") -> None:
    """``info`` as one panel per metric, beta on a log axis; a PNG at ``path``."""
    figure = _figure(10.0, 4.2)
    grid = figure.subplots(1, len(info.metrics), squeeze=False)
    for column, metric in enumerate(info.metrics):
        axes: Axes = grid[0][column]
        for s in info.series:
            if s.metric == metric:
                axes.scatter(
                    s.beta,
                    s.values,
                    s=30,
                    color=s.color,
                    marker=s.marker,
                    label=s.label,
                    zorder=3,
                )
        for line in info.lines:
            if line.metric == metric:
                axes.axhline(
                    line.value,
                    color=line.color,
                    linestyle=line.style,
                    linewidth=1.0,
                    label=line.label,
                )
        if info.shown(metric):
            axes.set_xscale("log")
        else:
            _empty(axes, f"no FINISHED trial with beta > 0 and a {metric}")
        axes.set_xlabel("beta (matching loss weight, log scale)")
        axes.set_ylabel(f"{metric} (%)")
        axes.set_title(metric, fontsize=10)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
    head = f"{title}: " if title else ""
    figure.suptitle(
        f"{head}map and attr_auc against beta, {info.plotted} FINISHED trials"
        + (f" ({info.left_out} without a positive beta not on the axis)" if info.left_out else ""),
        fontsize=10,
    )
    _save(figure, path)


def plot_metrics_vs_beta(
    finished: pa.Table, rows: Sequence[ReportRow], path: Path, *, title: str = ""
) -> int:
    """``map`` and ``attr_auc`` of the FINISHED trials against ``beta`` (log axis), one
    series per matching kind (and a marker per method when there are several); the table's
    naive and teacher rows as horizontal lines. Trials without a positive ``beta`` (naive
    ones, beta 0) have no place on the log axis. Writes a PNG to ``path``; returns how many
    trials were plotted."""
    info = metrics_vs_beta_info(finished, rows)
    draw_metrics_vs_beta(info, path, title=title)
    return info.plotted


# Attribution overlays.


@dataclass(frozen=True)
class OverlayInfo:
    """What the overlay grid draws.

    Attributes:
        base: the images (with their indices and classes) every column's maps are of: the
            first trial row's.
        columns: (label, maps [N, H, W] in [0, 1]) per column after the image: the teacher's,
            then each trial row's whose maps are of the same images and classes.
    """

    base: OverlayMaps
    columns: tuple[tuple[str, npt.NDArray[np.float32]], ...]

    @property
    def drawn(self) -> list[str]:
        """The labels of the trial rows' columns (after the teacher's)."""
        return [label for label, _ in self.columns[1:]]


def overlay_info(rows: Sequence[ReportRow], maps: Mapping[str, OverlayMaps]) -> OverlayInfo | None:
    """The overlay grid of the trial rows of ``rows`` (teacher rows and rows without a run
    are skipped), ``maps`` the overlay maps of the runs that logged them, by run id.

    The first row with maps gives the images and the teacher's column; a later row whose maps
    show other images or classes (another teacher or split) is left out. Columns are labelled
    by row, with the method in front when ``rows`` are of several methods. None when no row
    has maps.
    """
    several = len({r.method for r in rows}) > 1
    base: OverlayMaps | None = None
    columns: list[tuple[str, npt.NDArray[np.float32]]] = []
    for r in rows:
        if r.row == "teacher" or r.run_id is None or r.run_id not in maps:
            continue
        found = maps[r.run_id]
        if base is None:
            base = found
            columns.append(("teacher", found.teacher))
        elif not (
            np.array_equal(found.indices, base.indices)
            and np.array_equal(found.targets, base.targets)
        ):
            continue
        columns.append((f"{r.method} {r.row}" if several else r.row, found.student))
    if base is None:
        return None
    return OverlayInfo(base=base, columns=tuple(columns))


def draw_overlay_grid(info: OverlayInfo, path: Path, *, title: str) -> Path:
    """``info`` as one PNG, a row per image, with :func:`draw_overlays`."""
    return draw_overlays(info.base, list(info.columns), path, title=title)


def draw_trial_overlay(maps_path: Path, path: Path) -> Path:
    """A trial's teacher-vs-student grid (``attribution_overlay.png``) from its saved maps."""
    from trainables.overlays import load_overlay_maps  # torch: imported when drawn

    maps = load_overlay_maps(maps_path)
    return draw_overlays(
        maps,
        [("teacher", maps.teacher), ("compressed", maps.student)],
        path,
        title="Grad-CAM, teacher's top-1 class",
    )


def _class_name(maps: OverlayMaps, image: int) -> str:
    target = int(maps.targets[image])
    if 0 <= target < len(maps.class_names):
        return maps.class_names[target]
    return f"class {target}"


def draw_overlays(
    images: OverlayMaps,
    columns: Sequence[tuple[str, npt.NDArray[np.float32]]],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """One PNG: a row per image; the image, then each labelled map laid over it.

    Args:
        images: where the images, their classes and indices come from.
        columns: (label, maps [N, H, W] in [0, 1]) per column, e.g. ``("teacher", ...)``; every
            maps array holds the same images as ``images``.
        path: the PNG to write.
        title: the figure's title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = images.images.shape[0]
    for label, maps in columns:
        if maps.shape[0] != rows:
            raise ValueError(
                f"columns: {label!r} must hold maps of the {rows} images, got {maps.shape[0]}"
            )
    width = 1 + len(columns)
    figure = Figure(figsize=(1.9 * width, 1.9 * rows + (0.5 if title else 0.2)))
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, width, squeeze=False)
    for row in range(rows):
        picture = images.images[row]
        cells: list[tuple[str, npt.NDArray[np.float32] | None]] = [("image", None), *columns]
        for column, (label, shown) in enumerate(cells):
            axes = grid[row][column]
            axes.imshow(picture)
            if shown is not None:
                axes.imshow(shown[row], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(label, fontsize=9)
        grid[row][0].set_ylabel(
            f"#{int(images.indices[row])}: {_class_name(images, row)}", fontsize=8
        )
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=80)
    return target
