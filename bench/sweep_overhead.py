"""Share of a demo-sized trial's wall time spent outside training and evaluation.

Run ``python -m bench.sweep_overhead [--trials 2] [--max-concurrent 1] [--train-size 4000]``.

It runs a real study through the real runner (:func:`study.runner.run_study`: teacher stage,
local Ray, Tune with the Optuna searcher, the driver's MLflow callback, Tune checkpoints) on
the embedded demo spec with overrides: a temporary SQLite MLflow store and storage folder,
``--trials`` trials (the demo's first enqueued ones), at most ``--max-concurrent`` at a time,
and a one-epoch teacher (the teacher stage is no part of the Tune phase; its time is reported
apart). Epochs, image size, batch size and data sizes are the demo's; ``--train-size`` can
shrink the run, which makes the share larger, not smaller.

The shared loop reports each epoch's ``time_train_s`` and ``time_eval_s`` (see
``trainables.loop``); Tune writes every reported result to the trial's ``result.json`` with
``time_this_iter_s`` and ``time_total_s``. From those it prints one JSON line per trial and a
summary line.

Per trial: ``train_eval_s`` (summed over epochs); ``ray_time_total_s`` (Ray's
``time_total_s``: the trainable's first ``train()`` call to its last report);
``driver_wall_s`` (the trial's start to its end as the driver's callbacks see them, i.e. its
MLflow run's start and end; Tune calls ``on_trial_start`` once the trial's actor is up, so
starting that process is not in it); ``share_ray`` and ``share_driver`` = 1 - train_eval /
each; and where the rest went: ``setup_gap_s`` (epoch 0's iteration minus its training and
evaluation: building teacher, student and loaders, fetching the teacher's weights, the first
checkpoint), ``report_gaps_s`` (the later epochs' iterations minus their training and
evaluation: state copies, checkpoint writes, the report round trip, which waits for the
driver's result handling, MLflow logging included) and ``outside_trainable_s`` (driver wall
minus Ray's total: the last result's handling, stopping the trial).

Summary: ``tune_seconds`` (``Tuner.fit``); ``share_tune`` = 1 - summed train_eval /
(tune_seconds x concurrency); ``share_tune_with_ray_init`` (``ray.init`` counted in the Tune
phase); ``tune_gap_outside_trials_s`` (the Tune phase's trial slots no trial's driver wall
covers: starting each trial's actor process, Tuner setup, search, scheduling, shutdown);
``between_trials_s`` (its part between one trial's end and the next one's start, one trial at
a time only); ``cold_import_trainable_s`` (what a fresh process takes to import the trainable,
paid by every trial's new actor); ``target_share`` 0.05 and ``met`` (``share_tune`` <= target:
it covers every per-trial overhead too).

Exit status 1 when a trial failed or left no results to read.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench._common import driver_spans, emit, environment, study_root, trial_results

BENCH = "sweep_overhead"
TARGET_SHARE = 0.05
_ROOT = Path(__file__).resolve().parent.parent


def _spec_overrides(args: argparse.Namespace, root: Path) -> list[str]:
    overrides = [
        f"name={BENCH}-{os.getpid()}",
        f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"storage_path={root / 'results'}",
        f"trials={args.trials}",
        f"max_concurrent={args.max_concurrent}",
        f"teacher.epochs={args.teacher_epochs}",
        f"dataset.train_size={args.train_size}",
    ]
    if args.epochs is not None:
        overrides.append(f"epochs={args.epochs}")
    return overrides + list(args.set)


def _cold_import_seconds() -> float:
    """Seconds a fresh Python process takes to import the trainable (torch, Ray, apc).

    Tune starts a new actor process per trial (``reuse_actors`` is off), which pays this before
    the driver sees the trial start; a hint at what ``tune_gap_outside_trials_s`` holds.
    """
    code = (
        "import time; t = time.perf_counter(); import ray.tune, trainables.distillation; "
        "print(time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_ROOT
    )
    return float(done.stdout.strip().splitlines()[-1])


def _share(work: float, wall: float) -> float | None:
    return round(1.0 - work / wall, 4) if wall > 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=4000, help="the demo's: 4000")
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    parser.add_argument("--set", action="append", default=[], help="more spec overrides")
    parser.add_argument("--keep", type=Path, default=None, help="keep the study here")
    args = parser.parse_args(argv)
    if min(args.trials, args.max_concurrent, args.train_size, args.teacher_epochs) < 1:
        parser.error("--trials, --max-concurrent, --train-size, --teacher-epochs must be >= 1")

    from study.presets import DEMO_SPEC
    from study.runner import run_study
    from study.spec import SpecError, apply_overrides, parse_spec, read_spec_text

    with contextlib.ExitStack() as stack:
        root = study_root(stack, args.keep, prefix=f"{BENCH}-")
        text, data = read_spec_text(DEMO_SPEC)
        data, problems = apply_overrides(data, _spec_overrides(args, root))
        if problems:
            raise SpecError(problems)
        if isinstance(data, dict) and isinstance(data.get("enqueue"), list):
            # A spec may not enqueue more trials than it runs: keep the demo's first ones.
            data["enqueue"] = data["enqueue"][: args.trials]
        spec = parse_spec(data, base_dir=DEMO_SPEC.parent)
        load_before = os.getloadavg()[0]
        # Ray's progress table and the trials' output go to stderr: stdout is JSON lines only.
        with contextlib.redirect_stdout(sys.stderr):
            outcome = run_study(spec, spec_text=text)
        load_after = os.getloadavg()[0]
        results = trial_results(Path(spec.storage_path) / spec.name)
        spans = driver_spans(spec.tracking_uri, spec.name)

    env = environment("cpu")
    cpus = os.cpu_count() or 1
    per_trial_cpu = max(spec.resources_per_trial.cpu, 1e-9)
    concurrency = max(1, min(spec.max_concurrent, spec.trials, int(cpus // per_trial_cpu)))
    total_work = 0.0
    totals = {"setup_gap_s": 0.0, "report_gaps_s": 0.0, "outside_trainable_s": 0.0}
    driver_total = 0.0
    for trial_id, rows in results.items():
        train = sum(float(r["time_train_s"]) for r in rows)
        evaluation = sum(float(r["time_eval_s"]) for r in rows)
        work = train + evaluation
        gaps = [float(r["time_this_iter_s"]) - r["time_train_s"] - r["time_eval_s"] for r in rows]
        ray_total = float(rows[-1]["time_total_s"])
        start, end = spans.get(trial_id, (0.0, 0.0))
        driver = end - start
        parts = {
            "setup_gap_s": gaps[0],
            "report_gaps_s": sum(gaps[1:]),
            "outside_trainable_s": driver - ray_total,
        }
        for key, value in parts.items():
            totals[key] += value
        total_work += work
        driver_total += driver
        share_driver = _share(work, driver)
        emit(
            {
                "bench": BENCH,
                "trial": trial_id,
                "config": rows[-1].get("config", {}),
                "epochs": len(rows),
                "train_s": round(train, 3),
                "eval_s": round(evaluation, 3),
                "train_eval_s": round(work, 3),
                "ray_time_total_s": round(ray_total, 3),
                "driver_wall_s": round(driver, 3),
                "share_ray": _share(work, ray_total),
                "share_driver": share_driver,
                **{key: round(value, 3) for key, value in parts.items()},
                "target_share": TARGET_SHARE,
                "met": share_driver is not None and share_driver <= TARGET_SHARE,
            }
        )
    slots = outcome.tune_seconds * concurrency
    ordered = sorted(spans.values())
    between = (
        sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(ordered))
        if concurrency == 1
        else None
    )
    share_tune = _share(total_work, slots)
    complete = outcome.failed == 0 and len(results) == outcome.trials > 0
    emit(
        {
            "bench": BENCH,
            "summary": True,
            "trials": outcome.trials,
            "failed": outcome.failed,
            "max_concurrent": spec.max_concurrent,
            "concurrency": concurrency,
            "epochs": spec.epochs,
            "train_size": spec.dataset.train_size,
            "val_size": spec.dataset.val_size,
            "image_size": spec.dataset.image_size,
            "study_seconds": round(outcome.seconds, 3),
            "teacher_seconds": round(outcome.teacher_seconds, 3),
            "ray_init_seconds": round(outcome.ray_init_seconds, 3),
            "tune_seconds": round(outcome.tune_seconds, 3),
            "train_eval_s": round(total_work, 3),
            "share_tune": share_tune,
            "share_tune_with_ray_init": _share(
                total_work, (outcome.tune_seconds + outcome.ray_init_seconds) * concurrency
            ),
            **{key: round(value, 3) for key, value in totals.items()},
            "tune_gap_outside_trials_s": round(slots - driver_total, 3),
            "between_trials_s": None if between is None else round(between, 3),
            "cold_import_trainable_s": round(_cold_import_seconds(), 3),
            "loadavg_1m_before_after": [round(load_before, 2), round(load_after, 2)],
            "target_share": TARGET_SHARE,
            "met": complete and share_tune is not None and share_tune <= TARGET_SHARE,
            **env,
        }
    )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
