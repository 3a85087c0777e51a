"""What ASHA early stopping saves on the demo study, and what it changes in the results.

Run ``python -m bench.early_stopping [--grace-period 2] [--reduction-factor 2] [--trials N]``
(the demo twice: about 13 minutes on the idle 2-core machine, the teacher cached after the
first).

It runs the embedded demo study (``study/presets/demo.yaml``: 12 distillation trials of 6
epochs, two at a time, NSGA-II over map, attr_auc and params, the paper's four settings
enqueued first) twice through the real runner in one local Ray session: as it is, then with
``scheduler: {name: asha, metric: map, ...}``. Both share a temporary MLflow store and the
teacher cache, so the teacher is trained once and is in neither setting's time.

Per setting (one JSON line each): ``wall_s`` (``Tuner.fit``), ``epochs`` (epochs the trials
trained, from Tune's ``result.json`` files), ``trial_s`` (their summed ``time_train_s`` +
``time_eval_s``, the compute), ``stopped_early`` (trials ASHA stopped), ``best`` (the best
final value of each objective over the trials that ran to the end) and ``enqueued`` (the final
map and attr_auc of the paper's four settings, or the epochs they got when stopped).
Summary: ``compute_saved`` = 1 - trial_s(ASHA) / trial_s(none), ``epochs_saved`` and the wall
time ratio. The trials differ between the settings after the enqueued ones (NSGA-II sees
other results), so the savings are those of one study as a user runs it, not of the same
trials.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench._common import emit, environment, study_root, train_eval_seconds, trial_results

BENCH = "early_stopping"


def _run(
    args: argparse.Namespace, root: Path, text: str, data: object, *, asha: bool
) -> dict[str, Any]:
    from study.presets import DEMO_SPEC
    from study.runner import run_study
    from study.spec import SpecError, apply_overrides, parse_spec

    label = "asha" if asha else "none"
    overrides = [
        f"name={BENCH}-{os.getpid()}-{label}",
        f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"storage_path={root / 'results'}",
        *([f"trials={args.trials}"] if args.trials else []),
    ]
    data, problems = apply_overrides(data, overrides)
    if problems:
        raise SpecError(problems)
    if isinstance(data, dict):
        data.pop("scheduler", None)
        if asha:
            data["scheduler"] = {
                "name": "asha",
                "metric": args.metric,
                "grace_period": args.grace_period,
                "reduction_factor": args.reduction_factor,
            }
    spec = parse_spec(data, base_dir=DEMO_SPEC.parent)
    outcome = run_study(spec, spec_text=text)
    results = trial_results(Path(spec.storage_path) / spec.name)
    finals = {trial: rows[-1] for trial, rows in results.items()}
    complete = {t: r for t, r in finals.items() if int(r["training_iteration"]) >= spec.epochs}
    best = {
        name: (max if direction == "max" else min)(
            (float(r[name]) for r in complete.values() if r.get(name) == r.get(name)),
            default=None,
        )
        for name, direction in spec.objectives.items()
    }
    enqueued = []
    for point in spec.enqueue:
        row = next((r for r in finals.values() if _matches(r.get("config", {}), point)), None)
        enqueued.append(
            {
                **dict(point),
                "epochs": None if row is None else int(row["training_iteration"]),
                "map": None if row is None else round(float(row["map"]), 2),
                "attr_auc": None if row is None else round(float(row["attr_auc"]), 2),
            }
        )
    return {
        "bench": BENCH,
        "scheduler": label,
        "trials": outcome.trials,
        "failed": outcome.failed,
        "wall_s": round(outcome.tune_seconds, 1),
        "epochs": sum(int(rows[-1]["training_iteration"]) for rows in results.values()),
        "trial_s": round(sum(train_eval_seconds(rows) for rows in results.values()), 1),
        "stopped_early": len(finals) - len(complete),
        "best": {k: None if v is None else round(v, 2) for k, v in best.items()},
        "enqueued": enqueued,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _matches(config: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    return all(
        str(config.get(key)) == str(value) or config.get(key) == value
        for key, value in point.items()
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--metric", default="map", help="ASHA's metric (default map)")
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=0, help="0: the demo's 12")
    parser.add_argument("--keep", type=Path, default=None, help="keep both studies here")
    args = parser.parse_args(argv)

    import ray

    from study.presets import DEMO_SPEC
    from study.spec import read_spec_text

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        root = study_root(stack, args.keep, prefix=f"{BENCH}-")
        text, data = read_spec_text(DEMO_SPEC)
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # stdout: JSON lines only
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
        stack.callback(ray.shutdown)
        records = [_run(args, root, text, data, asha=asha) for asha in (False, True)]
    for record in records:
        emit(record)
    full, asha = records
    emit(
        {
            "bench": BENCH,
            "summary": True,
            "metric": args.metric,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
            "compute_saved": round(1 - asha["trial_s"] / full["trial_s"], 3),
            "epochs_saved": round(1 - asha["epochs"] / full["epochs"], 3),
            "wall_ratio": round(asha["wall_s"] / full["wall_s"], 3),
            "bench_seconds": round(time.monotonic() - started, 1),
            **environment("cpu"),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
