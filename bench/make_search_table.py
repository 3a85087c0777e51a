"""Make the tabulated search benchmark: the demo's distillation trial over a grid, per epoch.

Run ``python -m bench.make_search_table [--processes 2]`` (``make bench-table``). It trains
the real distillation trainable (``trainables.distillation.run_distillation``, the body of
the service's Ray trainable, without Ray) on the demo's data with the demo's teacher (cached
by content hash where ``apc run`` caches it: ``apc_results/teachers`` of the working folder;
trained there first when missing, as the demo would), training settings and epochs, for
every point of a grid over the demo's search space, and writes every epoch's metrics to
``bench/tables/search_table.parquet`` (layout: :mod:`bench._search_table`), which
``bench.search_efficiency`` replays.

The grid: every categorical choice of the space (the matching kinds are those of
``trainables.matching.MATCHING_KINDS`` that the space offers; a kind the space does not list
is left out with a warning, since nothing could sample it and its conditions are unknown),
and for the numeric parameters the values of ``--grid`` (default ``beta=0.2,1,5,20``, the
space's range on a log grid, and ``drop_p=0.15,0.45``); a parameter is only varied where the
space's ``when`` conditions make it apply (``beta`` not for ``matching: none``). ``--grid
NAME=v1,v2`` also restricts a categorical parameter.

Resumable: the table is rewritten (atomically) after each finished grid point, and a point
already in it is skipped, so a killed run goes on where it stopped. The spec's overrides
(``--set``), the epochs and the teacher's key are stored in the table; a run with other ones
refuses to add to it. Each finished point prints one JSON line (its wall seconds). Every
trial uses the study's seed, as the service's trials do, so one row per grid point and epoch:
the table holds no seed-to-seed noise.

A tiny table for a try-out (a minute or two)::

    python -m bench.make_search_table --out /tmp/tiny.parquet --set dataset.train_size=256 \
        --set dataset.val_size=64 --set teacher.epochs=1 --set epochs=2 \
        --grid student_width=8 --grid beta=0.2,20 --grid drop_p=0.3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench._common import emit
from bench._search_table import (
    DIVERGED,
    EPOCH,
    METADATA_KEY,
    SECONDS,
    TABLE_PATH,
    grid_points,
    read_table_metadata,
)
from search_spaces import SearchSpace

BENCH = "search_table"

#: Numeric grid values when ``--grid`` names none for a parameter: beta spans the space's
#: [0.2, 20] on a log grid; drop_p two values inside [0.05, 0.6], either side of the demo's 0.3.
DEFAULT_GRID: dict[str, tuple[float, ...]] = {"beta": (0.2, 1.0, 5.0, 20.0), "drop_p": (0.15, 0.45)}

Scalar = bool | int | float | str | None


def _parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid: must be NAME=v1,v2,..., got {item!r}")
        grid[name] = values.split(",")
    return grid


def grid_values(space: SearchSpace, given: Mapping[str, Sequence[str]]) -> dict[str, list[Scalar]]:
    """Each parameter's grid values: see the module's docstring."""
    from trainables.matching import MATCHING_KINDS

    unknown = [name for name in given if name not in space.names]
    if unknown:
        raise SystemExit(
            f"--grid: {', '.join(unknown)} not in the space ({', '.join(space.names)})"
        )
    values: dict[str, list[Scalar]] = {}
    for parameter in space.parameters:
        if parameter.type == "categorical":
            choices = list(parameter.choices)
            if parameter.name == "matching":
                for kind in MATCHING_KINDS:
                    if kind not in choices:
                        warnings.warn(
                            f"matching kind {kind!r} is not in the search space's choices: left "
                            "out of the grid (add it to the space to tabulate it)",
                            stacklevel=2,
                        )
                choices = [k for k in MATCHING_KINDS if k in choices]
            if parameter.name in given:
                # The command line's text against the choices' own types (student_width: int).
                by_text = {str(c): c for c in choices}
                wrong = [v for v in given[parameter.name] if v not in by_text]
                if wrong:
                    raise SystemExit(f"--grid {parameter.name}: {wrong} not among {choices}")
                choices = [by_text[v] for v in given[parameter.name]]
            values[parameter.name] = choices
            continue
        raw = given.get(parameter.name, DEFAULT_GRID.get(parameter.name))
        if raw is None:
            raise SystemExit(f"--grid: give the values of numeric parameter {parameter.name!r}")
        numbers: list[Scalar] = []
        for text in raw:
            value: Scalar = int(text) if parameter.type == "int" else float(text)
            problem = parameter.check(value)
            if problem:
                raise SystemExit(f"--grid {parameter.name}: {problem}")
            numbers.append(value)
        values[parameter.name] = sorted(set(numbers), key=float)  # type: ignore[arg-type]
    return values


def _point_key(point: Mapping[str, Any], names: Sequence[str]) -> str:
    return json.dumps({n: point.get(n) for n in names}, sort_keys=True)


def run_point(
    config: dict[str, Scalar], setup: Any, teacher_state: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], float]:
    """Train one grid point; its rows (one per epoch) and wall seconds. Runs in a worker."""
    import torch

    from trainables.distillation import run_distillation
    from trainables.loop import DivergedError, TrainState

    torch.set_num_threads(max(1, setup.threads))
    rows: list[dict[str, Any]] = []
    started = last = time.perf_counter()

    def report(epoch: int, metrics: dict[str, float], _state: TrainState) -> None:
        nonlocal last
        last = time.perf_counter()
        rows.append(
            {
                EPOCH: epoch + 1,
                **{k: float(v) for k, v in metrics.items()},
                SECONDS: float(metrics["time_train_s"] + metrics["time_eval_s"]),
                DIVERGED: False,
            }
        )

    try:
        run_distillation(config, setup, teacher_state, report=report, device="cpu")
    except DivergedError:
        # The epoch it diverged in: no metrics (null, read back as NaN), its time spent.
        rows.append({EPOCH: len(rows) + 1, SECONDS: time.perf_counter() - last, DIVERGED: True})
    return [{**config, **row} for row in rows], time.perf_counter() - started


def _write(path: Path, table: pa.Table, metadata: Mapping[str, Any]) -> None:
    schema_metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(metadata)}
    table = table.replace_schema_metadata(schema_metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    pq.write_table(table, partial, compression="zstd")
    partial.replace(path)  # atomic: a killed run leaves the previous table whole


def _as_table(rows: list[dict[str, Any]], names: Sequence[str]) -> pa.Table:
    # Every parameter a column, null where it does not apply; metrics as the rows hold them.
    columns = [*names, *dict.fromkeys(k for r in rows for k in r if k not in names)]
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a spec override, as apc run's --set (e.g. dataset.train_size=256)",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=v1,v2",
        help="grid values of a parameter (default beta=0.2,1,5,20 drop_p=0.15,0.45)",
    )
    parser.add_argument("--processes", type=int, default=1, help="grid points trained at once")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per point (0: the spec's resources_per_trial.cpu)",
    )
    parser.add_argument("--limit", type=int, default=0, help="train at most N new points (0: all)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="teacher cache (default: where apc run from here caches it)",
    )
    args = parser.parse_args(argv)

    from study.plan import plan_study
    from study.presets import DEMO_SPEC
    from study.runner import tune_storage
    from study.spec import load_spec
    from study.teacher import prepare_teacher
    from trainables import __version__

    spec = load_spec(DEMO_SPEC, overrides=args.set)
    if spec.method != "distillation":
        raise SystemExit(f"the table is of the distillation trainable, the spec's is {spec.method}")
    space = spec.search_space
    values = grid_values(space, _parse_grid(args.grid))
    points = grid_points(space, values)
    names = space.names
    out: Path = args.out.resolve()

    plan = plan_study(spec)
    cache = args.cache_dir or tune_storage(spec.storage_path)[1] / "teachers"
    teacher = prepare_teacher(spec, plan=plan, cache_dir=cache)  # progress on stderr
    setup = plan.trial if args.threads < 1 else replace(plan.trial, threads=args.threads)
    made_with = {
        "spec": DEMO_SPEC.name,
        "overrides": list(args.set),
        "epochs": spec.epochs,
        "teacher_key": teacher.key,
        "objectives": dict(spec.objectives),
        "version": __version__,
    }
    existing = pq.read_table(out) if out.is_file() else None
    if existing is not None:
        before = read_table_metadata(existing)
        earlier = {k: before.get(k) for k in made_with if k != "version"}
        now = {k: v for k, v in made_with.items() if k != "version"}
        if earlier != now:
            raise SystemExit(
                f"{out} was made with {earlier}, this run would add {now}: use another --out"
            )
    done = (
        set()
        if existing is None
        else {_point_key(row, names) for row in existing.select(list(names)).to_pylist()}
    )
    todo = [p for p in points if _point_key(p, names) not in done]
    already = len(points) - len(todo)
    if args.limit > 0:
        todo = todo[: args.limit]
    print(
        f"{len(points)} grid points, {already} in {out} already, "
        f"{len(todo)} to train ({args.processes} at a time)",
        file=sys.stderr,
        flush=True,
    )
    metadata = {**made_with, "grid": {k: list(v) for k, v in values.items()}}
    started = time.monotonic()
    # spawn: fresh interpreters, no forked torch thread pools.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        futures = {pool.submit(run_point, p, setup, teacher.state): p for p in todo}
        for future in concurrent.futures.as_completed(futures):
            point = futures[future]
            rows, seconds = future.result()
            new = _as_table(rows, names)
            existing = (
                new
                if existing is None
                else pa.concat_tables(
                    [existing.replace_schema_metadata(None), new], promote_options="default"
                )
            )
            _write(out, existing, metadata)
            emit(
                {
                    "bench": BENCH,
                    "point": point,
                    "seconds": round(seconds, 1),
                    "epochs": len(rows),
                    "diverged": bool(rows and rows[-1][DIVERGED]),
                    "final_map": _rounded(rows[-1].get("map")) if rows else None,
                }
            )
    emit(
        {
            "bench": BENCH,
            "summary": True,
            "points_trained": len(todo),
            "points_in_table": len(done) + len(todo),
            "grid_points": len(points),
            "seconds": round(time.monotonic() - started, 1),
            "processes": args.processes,
            "threads_per_point": setup.threads,
            "table": str(out),
            "table_bytes": out.stat().st_size if out.is_file() else 0,
        }
    )
    return 0


def _rounded(value: object) -> float | None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), 2)


if __name__ == "__main__":
    raise SystemExit(main())
