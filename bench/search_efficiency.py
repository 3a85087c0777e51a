"""Which sampler and scheduler find the demo's Pareto front fastest: a tabulated replay.

Run ``python -m bench.search_efficiency [--processes 2]`` (after ``make bench-table``), or
``--quick`` for a try-out. It replays ``bench/tables/search_table.parquet`` (made by
``bench.make_search_table``: the demo's distillation trial trained over a grid, every epoch's
metrics) instead of training, the way Syne Tune's and HPOBench's tabulated benchmarks do, so
that a study of 200 trials costs seconds and every (sampler, scheduler) pair sees the same
results for the same configuration.

Per budget (``--budgets TRIALS:MAX_CONCURRENT``, default ``12:2,50:4,200:8``: the demo's 12
trials two at a time, then a workstation's and a cluster's), sampler (``random``, ``nsga2``,
``tpe``: multivariate multi-objective TPE, ``gp``: Optuna's ``GPSampler``, log expected
hypervolume improvement for several objectives), scheduler (``none``; ``asha``: Ray's ASHA on
``map``; ``mo_asha``: :class:`study.schedulers.MultiObjectiveASHA`; both with
``--grace-period 2 --reduction-factor 2``, as ``bench.early_stopping``) and seed, one
simulated study:

* the searcher is the service's own (``study.runner.build_searcher`` of the demo spec with
  that sampler, seed and budget: the demo's enqueued settings first, repeats not re-run,
  NaN objectives told as their worst value, a stopped trial told PRUNED);
* the scheduler is the service's own object (``study.runner.build_scheduler``), driven with
  the calls Tune's controller makes (``on_trial_add``, ``on_trial_result`` per epoch,
  ``on_trial_complete`` when a trial ends or is stopped, ``on_trial_error`` when it diverges);
* trials run ``max_concurrent`` at a time, asynchronously: each epoch takes the seconds the
  table measured for it (``--clock seconds``, default; ``epochs``: one unit each), a free slot
  is filled at once, and events are handled in time order (ties: the earlier trial first);
* a trial's results are looked up in the table (``--lookup nearest``, default, or
  ``linear``; see :mod:`bench._search_table`). A configuration whose loss diverged there
  reports NaN objectives at that epoch and fails (told FAIL, as Tune tells the searcher).

Measured: compute as epochs trained (every epoch any trial ran, stopped and failed ones
included) and the hypervolume of the front of the trials that ran every epoch (what ``apc
pareto`` shows: stopped trials are left out) over the demo's objectives (map max, attr_auc
max, params min), with ``analysis.hypervolume``, against one reference point for all runs:
``default_reference`` of the table's last-epoch rows. It is divided by the hypervolume of all
those rows (the best any search of the grid can reach), so 1 means the table's whole front
was found (``linear`` lookups may exceed 1 slightly). Each run is one JSON line with its
hypervolume after each finished trial against the epochs spent by then (``history``) and at
fixed shares of the budget's full compute (``hv_at``: 25, 50 and 100% of trials x epochs);
then one summary line per (budget, sampler, scheduler): median and interquartile range over
the seeds. The summary is also printed as a table on stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import heapq
import logging
import math
import multiprocessing
import statistics
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import emit
from bench._search_table import (
    EPOCH,
    LOOKUPS,
    SECONDS,
    TABLE_PATH,
    Curve,
    Lookup,
    SearchTable,
    grid_points,
    read_table,
)

BENCH = "search_efficiency"
SAMPLERS = ("random", "nsga2", "tpe", "gp")
SCHEDULERS = ("none", "asha", "mo_asha")
CLOCKS = ("seconds", "epochs")
#: Shares of a budget's full compute (trials x epochs) at which the hypervolume is reported.
FRACTIONS = (0.25, 0.5, 1.0)

COMPLETE, STOPPED, FAILED = "complete", "stopped", "failed"


@dataclass(frozen=True, kw_only=True)
class Case:
    """One simulated study."""

    budget: int
    max_concurrent: int
    sampler: str
    scheduler: str
    seed: int


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What every case of a run shares."""

    table: Path
    lookup: Lookup
    clock: str
    grace_period: int
    reduction_factor: float
    overrides: tuple[str, ...]
    trace: bool


@dataclass(kw_only=True)
class _Trial:
    """A simulated trial; ``trial_id`` is all Tune's schedulers read of a trial."""

    trial_id: str
    order: int
    config: dict[str, Any]
    curve: Curve
    epoch: int = 0  # epochs reported so far
    state: str = ""
    values: dict[str, float] = field(default_factory=dict)


def _spec(case: Case, settings: Settings, epochs: int) -> Any:
    from study.presets import DEMO_SPEC
    from study.spec import load_spec

    scheduler = {
        "none": [],
        "asha": [
            f"scheduler={{name: asha, metric: map, grace_period: {settings.grace_period}, "
            f"reduction_factor: {settings.reduction_factor}}}"
        ],
        "mo_asha": [
            f"scheduler={{name: mo_asha, grace_period: {settings.grace_period}, "
            f"reduction_factor: {settings.reduction_factor}}}"
        ],
    }[case.scheduler]
    return load_spec(
        DEMO_SPEC,
        overrides=[
            *settings.overrides,
            f"trials={case.budget}",
            f"max_concurrent={case.max_concurrent}",
            f"seed={case.seed}",
            f"epochs={epochs}",
            f"sampler={case.sampler}",
            *scheduler,
        ],
    )


def _searcher(spec: Any, case: Case) -> Any:
    from study.runner import build_searcher

    return build_searcher(spec)


def _quiet() -> None:
    """Optuna logs every trial, Ray's searcher every refused value, and Optuna warns that
    GPSampler and multivariate TPE are experimental: none of it is this bench's output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name in ("ray.tune.search.optuna.optuna_search", "study.search"):
        logging.getLogger(name).setLevel(logging.ERROR)


def simulate(case: Case, settings: Settings) -> dict[str, Any]:
    """One study replayed; its JSON record (see the module's docstring)."""
    import torch
    from ray.tune.schedulers import TrialScheduler

    from analysis.hypervolume import default_reference, hypervolume, hypervolume_history
    from study.runner import build_scheduler

    torch.set_num_threads(1)  # the GP's fits: one thread per replay process
    _quiet()
    started = time.monotonic()
    table = read_table(settings.table)
    epochs = int(max(table.column(EPOCH).to_pylist()))
    spec = _spec(case, settings, epochs)
    lookup = SearchTable(table, space=spec.search_space)
    objectives = dict(spec.objectives)
    finals = _final_rows(lookup, objectives, epochs)
    reference = default_reference(finals, objectives)
    best = hypervolume(finals, objectives, reference=reference)
    searcher = _searcher(spec, case)
    scheduler = build_scheduler(spec)

    trials: list[_Trial] = []
    running: list[tuple[float, int, _Trial]] = []  # (time its epoch ends, order, trial)
    now = 0.0
    spent = 0  # epochs trained by any trial so far
    finished: list[tuple[int, float, _Trial]] = []  # (epochs spent, time) at each end

    def duration(trial: _Trial) -> float:
        if settings.clock == "epochs":
            return 1.0
        seconds = trial.curve.rows[trial.epoch].get(SECONDS, math.nan)
        return seconds if math.isfinite(seconds) and seconds > 0 else 1.0

    def start() -> bool:
        trial_id = f"t{len(trials):04d}"
        config = searcher.suggest(trial_id)
        if config is None:  # the searcher has nothing more to suggest
            return False
        trial = _Trial(
            trial_id=trial_id,
            order=len(trials),
            config=dict(config),
            curve=lookup.lookup(config, mode=settings.lookup),
        )
        trials.append(trial)
        if scheduler is not None:
            scheduler.on_trial_add(None, trial)
        heapq.heappush(running, (now + duration(trial), trial.order, trial))
        return True

    def end(trial: _Trial, state: str) -> None:
        trial.state = state
        finished.append((spent, now, trial))

    while True:
        while len(running) < spec.max_concurrent and len(trials) < spec.trials:
            if not start():
                break
        if not running:
            break
        now, _, trial = heapq.heappop(running)
        row = trial.curve.rows[trial.epoch]
        trial.epoch += 1
        spent += 1
        result = {**row, "training_iteration": trial.epoch, EPOCH: trial.epoch}
        trial.values = {name: row.get(name, math.nan) for name in objectives}
        if trial.curve.diverged and trial.epoch == len(trial.curve.rows):
            # Tune: the trial raised; the scheduler and the searcher hear of an error.
            if scheduler is not None:
                scheduler.on_trial_error(None, trial)
            searcher.on_trial_complete(trial.trial_id, error=True)
            end(trial, FAILED)
            continue
        searcher.on_trial_result(trial.trial_id, result)
        decision = (
            TrialScheduler.CONTINUE
            if scheduler is None
            else scheduler.on_trial_result(None, trial, result)
        )
        if trial.epoch >= epochs or decision == TrialScheduler.STOP:
            if scheduler is not None:
                scheduler.on_trial_complete(None, trial, result)
            searcher.on_trial_complete(trial.trial_id, result=result)
            end(trial, COMPLETE if trial.epoch >= epochs else STOPPED)
            continue
        heapq.heappush(running, (now + duration(trial), trial.order, trial))

    # The front of the trials that ran every epoch, in the order they ended.
    complete = [(s, t, trial) for s, t, trial in finished if trial.state == COMPLETE]
    rows = [_objective_row(trial.values, objectives) for _, _, trial in complete]
    volumes = (
        [v for _, v in hypervolume_history(rows, objectives, reference=reference)] if rows else []
    )
    history = [
        [s, round(t, 2), _share(v, best)] for (s, t, _), v in zip(complete, volumes, strict=True)
    ]
    full = spec.trials * epochs
    record: dict[str, Any] = {
        "bench": BENCH,
        "budget": case.budget,
        "max_concurrent": case.max_concurrent,
        "sampler": case.sampler,
        "scheduler": case.scheduler,
        "seed": case.seed,
        "final_hv": history[-1][2] if history else 0.0,
        "epochs": spent,
        "sim_seconds": round(now, 1),
        "trials": len(trials),
        "complete": len(complete),
        "stopped": sum(t.state == STOPPED for t in trials),
        "failed": sum(t.state == FAILED for t in trials),
        "hv_at": {f"{f:g}": _hv_at(history, f * full) for f in FRACTIONS},
        "history": history,
        "replay_s": round(time.monotonic() - started, 2),
    }
    if settings.trace:
        record["trace"] = [
            {"config": t.config, "state": t.state, "epochs": t.epoch, "values": t.values}
            for t in trials
        ]
    return record


def _final_rows(
    lookup: SearchTable, objectives: Mapping[str, str], epochs: int
) -> list[dict[str, float | None]]:
    """The objectives of every grid point that ran every epoch, at its last."""
    return [
        _objective_row(curve.rows[-1], objectives)
        for curve in lookup.points.values()
        if not curve.diverged and len(curve.rows) >= epochs
    ]


def _objective_row(
    values: Mapping[str, float], objectives: Mapping[str, str]
) -> dict[str, float | None]:
    # NaN is "no value" to the hypervolume: such a trial adds nothing.
    return {n: None if math.isnan(values.get(n, math.nan)) else values[n] for n in objectives}


def _share(volume: float, best: float) -> float:
    return round(volume / best, 6) if best > 0 else 0.0


def _hv_at(history: Sequence[Sequence[float]], compute: float) -> float:
    """The hypervolume once ``compute`` epochs were spent (0 before the first trial ended)."""
    reached = [h[2] for h in history if h[0] <= compute]
    return reached[-1] if reached else 0.0


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarise(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per (budget, sampler, scheduler): medians and quartiles over the seeds."""
    cells: dict[tuple[int, str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        cells.setdefault((record["budget"], record["sampler"], record["scheduler"]), []).append(
            record
        )
    lines = []
    for (budget, sampler, scheduler), runs in cells.items():
        hv = _quartiles([r["final_hv"] for r in runs])
        spent = _quartiles([float(r["epochs"]) for r in runs])
        lines.append(
            {
                "bench": BENCH,
                "summary": True,
                "budget": budget,
                "sampler": sampler,
                "scheduler": scheduler,
                "runs": len(runs),
                "final_hv_median": round(hv[1], 4),
                "final_hv_iqr": [round(hv[0], 4), round(hv[2], 4)],
                "epochs_median": spent[1],
                "epochs_iqr": [spent[0], spent[2]],
                "hv_at_median": {
                    key: round(_quartiles([r["hv_at"][key] for r in runs])[1], 4)
                    for key in runs[0]["hv_at"]
                },
            }
        )
    return lines


def _print_table(lines: Sequence[Mapping[str, Any]]) -> None:
    keys = list(lines[0]["hv_at_median"]) if lines else []
    print(
        "| trials | sampler | scheduler | runs | final HV median [IQR] | epochs median [IQR] | "
        + " | ".join(f"HV at {float(k):.0%} compute" for k in keys)
        + " |",
        file=sys.stderr,
    )
    print("|---" * (6 + len(keys)) + "|", file=sys.stderr)
    for line in lines:
        q1, q3 = line["final_hv_iqr"]
        e1, e3 = line["epochs_iqr"]
        print(
            f"| {line['budget']} | {line['sampler']} | {line['scheduler']} | {line['runs']} | "
            f"{line['final_hv_median']:.3f} [{q1:.3f}, {q3:.3f}] | "
            f"{line['epochs_median']:g} [{e1:g}, {e3:g}] | "
            + " | ".join(f"{line['hv_at_median'][k]:.3f}" for k in keys)
            + " |",
            file=sys.stderr,
        )


def _check_coverage(table: Path, overrides: Sequence[str]) -> None:
    """Every categorical combination the space can sample has a grid point, or exit 2."""
    from study.presets import DEMO_SPEC
    from study.spec import load_spec

    space = load_spec(DEMO_SPEC, overrides=overrides).search_space
    lookup = SearchTable(read_table(table), space=space)
    categorical = {p.name: list(p.choices) for p in space.parameters if p.type == "categorical"}
    have = {tuple((k, v) for k, v in key if k in categorical) for key in lookup.points}
    # Numeric parameters as one placeholder value each: only the categorical part matters.
    values = {p.name: categorical.get(p.name, [0.0]) for p in space.parameters}
    missing = []
    for point in grid_points(space, values):
        key = tuple(sorted((k, v) for k, v in point.items() if k in categorical))
        if key not in have:
            missing.append(dict(key))
    if missing:
        raise SystemExit(
            f"{table}: no grid point for {missing}: remake it (bench.make_search_table)"
        )


def _budgets(text: str) -> list[tuple[int, int]]:
    budgets = []
    for item in text.split(","):
        trials, _, concurrent = item.partition(":")
        budgets.append((int(trials), int(concurrent or 1)))
    return budgets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--table", type=Path, default=TABLE_PATH)
    parser.add_argument("--budgets", default="12:2,50:4,200:8", help="TRIALS:MAX_CONCURRENT,...")
    parser.add_argument(
        "--seeds", default="10,10,5", help="seeds per budget (one number: for every budget)"
    )
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    parser.add_argument("--lookup", choices=LOOKUPS, default="nearest")
    parser.add_argument("--clock", choices=CLOCKS, default="seconds")
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=2.0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a demo spec override (e.g. enqueue=[] for no enqueued settings)",
    )
    parser.add_argument("--processes", type=int, default=1, help="studies replayed at once")
    parser.add_argument("--trace", action="store_true", help="every trial in each run's line")
    parser.add_argument(
        "--quick", action="store_true", help="a try-out: the 12-trial budget, 2 seeds"
    )
    args = parser.parse_args(argv)

    if args.quick:
        args.budgets, args.seeds = "12:2", "2"
    if not args.table.is_file():
        raise SystemExit(
            f"{args.table}: no table; make it first: python -m bench.make_search_table"
        )
    budgets = _budgets(args.budgets)
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) == 1:
        seeds *= len(budgets)
    if len(seeds) != len(budgets):
        raise SystemExit(
            f"--seeds: one number or one per budget ({len(budgets)}), got {args.seeds}"
        )
    samplers = args.samplers.split(",")
    schedulers = args.schedulers.split(",")
    for name, given, valid in (
        ("samplers", samplers, SAMPLERS),
        ("schedulers", schedulers, SCHEDULERS),
    ):
        if not set(given) <= set(valid):
            raise SystemExit(f"--{name}: must be among {', '.join(valid)}, got {given}")
    _check_coverage(args.table, args.set)
    settings = Settings(
        table=args.table,
        lookup=args.lookup,
        clock=args.clock,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        overrides=tuple(args.set),
        trace=args.trace,
    )
    cases = [
        Case(budget=b, max_concurrent=c, sampler=sa, scheduler=sc, seed=seed)
        for (b, c), n in zip(budgets, seeds, strict=True)
        for sa in samplers
        for sc in schedulers
        for seed in range(n)
    ]
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        for record in pool.map(simulate, cases, [settings] * len(cases)):
            emit(record)
            records.append(record)
    lines = summarise(records)
    for line in lines:
        emit(line)
    _print_table(lines)
    emit(
        {
            "bench": BENCH,
            "summary": True,
            "table": str(args.table),
            "lookup": args.lookup,
            "clock": args.clock,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
            "runs": len(records),
            "replay_cpu_s": round(sum(r["replay_s"] for r in records), 1),
            "bench_seconds": round(time.monotonic() - started, 1),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
