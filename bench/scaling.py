"""Trials per hour at one vs two trials at a time, one CPU each, and Tune's overhead per trial.

Run ``python -m bench.scaling [--trials 4] [--epochs 2] [--train-size 4000]`` (about 5 minutes on
the idle 2-core machine: each trial about 35 s).

It runs the same small distillation study twice through the real runner
(:func:`study.runner.run_study`: teacher stage, Tune with the Optuna searcher, the driver's
MLflow callback, Tune checkpoints), first at ``max_concurrent: 1``, then at 2, in one process
and one local Ray session that this bench starts: ``run_study`` then neither starts nor stops
Ray, so Ray's start-up is in neither setting. It is always a fresh local Ray, never one already
running on the machine (``ray_address`` is not used). Both studies share a temporary SQLite
MLflow store and storage folder, so the teacher (``--teacher-epochs``, one by default: its
quality is no part of this) is trained once, by the first, and loaded from the cache by the
second; the teacher stage is no part of either setting's wall time. The data is the demo's
(shapes, 4000 training and 500 evaluation images of 64 px, batch 32);
``resources_per_trial.cpu`` is 1.

The trials are the same in both settings and cost the same as each other: all of them enqueued,
SWA at student width 2 with distinct betas (1.0, 1.1, ...; beta only scales a loss term), so the
search asks Optuna for nothing and two trials that start together end together.

Threads: ``study.plan.trial_setup`` sets ``TrialSetup.threads = int(resources_per_trial.cpu)``
and ``trainables.trial.run_tune_trial`` calls ``torch.set_num_threads(setup.threads)`` in the
thread that then trains. To see it from inside the trials, the bench wraps the method's
trainable (``trainables.registry.get_trainable``, patched while the studies run): after the
trainable returns, in that same thread and actor process, it writes ``torch.get_num_threads()``,
``torch.get_num_interop_threads()``, ``OMP_NUM_THREADS`` (Ray sets it from the actor's CPUs),
the process's CPU affinity and ``setup.threads`` to a file; the lines report them and the exit
status is 1 unless every trial trained on exactly 1 torch thread.

Per setting (one JSON line each): ``wall_s`` (``Tuner.fit``, i.e. ``StudyOutcome.tune_seconds``),
``trials_per_hour`` = trials / wall_s x 3600; ``train_eval_s`` (a trial's summed
``time_train_s`` + ``time_eval_s``, mean over trials; higher at 2 than at 1 when the trials
slow each other down); ``overhead_s`` = (wall_s x concurrency - summed train_eval_s) / trials:
Tune wall time per trial slot minus the trial's own work, every overhead included (actor start,
building teacher, student and data, checkpoints, the export, the driver's result handling and
MLflow logging, Tuner set-up and shutdown, and at 2 a slot left idle by an odd trial out);
``overhead_in_trial_s`` (mean of the trial's MLflow run span minus its train_eval_s: the part
between the trial's start and end as the driver sees them); ``fixed_s`` (wall_s minus the span
from the first trial's start to the last one's end: Tuner set-up, the first actors' start,
shutdown); ``max_overlap`` (most trials running at once, from those spans).

Summary: ``speedup`` = trials_per_hour at 2 / at 1, ``target`` 1.7 and ``met``;
``work_slowdown`` = train_eval_s at 2 / at 1 (the contention between the two trials alone: the
speedup cannot exceed 2 / work_slowdown); ``cpu_parallel_slowdown``, the same without Ray, Tune
or data: ``--baseline-steps`` training steps of the student (one torch thread, batch 32) timed in
one process alone, then in two processes at once, before Ray starts (1.0 when the two cores
give twice the throughput of one; SMT siblings, shared memory bandwidth or a busy host raise
it). The figures are only meaningful on an otherwise idle machine: each line has the 1-minute
load average before and after.

``--keep DIR`` keeps both studies (MLflow store, Tune results, the threads files).

Exit status 1 when a trial failed or left no results, or a trial did not train on 1 thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from bench._common import (
    driver_spans,
    emit,
    environment,
    study_root,
    train_eval_seconds,
    trial_results,
)

BENCH = "scaling"
TARGET_SPEEDUP = 1.7
SETTINGS = (1, 2)
MATCHING = "swa"
STUDENT_WIDTH = 2
_ROOT = Path(__file__).resolve().parent.parent


def trial_configs(trials: int) -> list[dict[str, Any]]:
    """``trials`` distinct enqueued configurations of equal cost (SWA, beta 1.0, 1.1, ...)."""
    return [
        {"matching": MATCHING, "beta": round(1.0 + 0.1 * i, 2), "student_width": STUDENT_WIDTH}
        for i in range(trials)
    ]


def _spec_overrides(args: argparse.Namespace, root: Path, concurrency: int) -> list[str]:
    return [
        f"name={BENCH}-{os.getpid()}-c{concurrency}",
        f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"storage_path={root / 'results'}",
        "method=distillation",
        "search_space=distillation",
        f"trials={args.trials}",
        f"max_concurrent={concurrency}",
        "resources_per_trial.cpu=1",
        "resources_per_trial.gpu=0",
        f"epochs={args.epochs}",
        f"teacher.epochs={args.teacher_epochs}",
        f"dataset.train_size={args.train_size}",
        *args.set,
    ]


def _thread_probe(trainable: Callable[..., None], folder: Path) -> Callable[..., None]:
    """``trainable``, which afterwards writes the torch threads it trained with to ``folder``.

    Defined in a function, so Ray pickles it by value (workers need not import ``bench``).
    """

    def probed(config: dict[str, Any], setup: Any, teacher_state: Any) -> None:
        trainable(config, setup=setup, teacher_state=teacher_state)
        # The same thread as the training, after run_tune_trial's torch.set_num_threads.
        record = {
            "pid": os.getpid(),
            "setup_threads": setup.threads,
            "torch_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_affinity": len(os.sched_getaffinity(0)),
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(record))

    probed.__name__ = getattr(trainable, "__name__", "probed")
    return probed


def _probes(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


_STEPS = """
import sys, time, torch
from trainables.models import build_model
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model("vgg11_bn", num_classes=6, image_size=64, width_divisor=8)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
images, labels = torch.randn(32, 3, 64, 64), torch.rand(32, 6)
def step():
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(3):
    step()
started = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print(time.perf_counter() - started)
"""


def _cpu_parallel(steps: int) -> tuple[float, list[float]]:
    """Seconds of ``steps`` student training steps on one thread: alone, then two at once."""

    def start() -> subprocess.Popen[str]:
        command = [sys.executable, "-c", _STEPS, str(steps)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=_ROOT)

    def seconds(process: subprocess.Popen[str]) -> float:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"baseline steps: exit status {process.returncode}")
        return float(out.strip().splitlines()[-1])

    alone = seconds(start())
    pair = [start(), start()]
    return alone, [seconds(process) for process in pair]


def _max_overlap(spans: Sequence[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


@dataclass(frozen=True)
class Setting:
    """What one setting's study left: its outcome, per-trial results, spans and probes."""

    concurrency: int
    outcome: Any
    setup_threads: int
    results: dict[str, list[dict[str, Any]]]
    spans: dict[str, tuple[float, float]]
    probes: list[dict[str, Any]]
    loadavg: tuple[float, float]


def _run_setting(
    args: argparse.Namespace, root: Path, concurrency: int, text: str, data: object
) -> Setting:
    from study import plan as study_plan
    from study.presets import DEMO_SPEC
    from study.runner import run_study
    from study.spec import SpecError, apply_overrides, parse_spec
    from trainables import registry

    data, problems = apply_overrides(data, _spec_overrides(args, root, concurrency))
    if problems:
        raise SpecError(problems)
    if isinstance(data, dict):
        data["enqueue"] = trial_configs(args.trials)
        data.pop("scheduler", None)  # every trial runs all its epochs
    spec = parse_spec(data, base_dir=DEMO_SPEC.parent)
    setup_threads = study_plan.trial_setup(spec, num_classes=1).threads
    folder = root / f"threads-c{concurrency}"
    probed = _thread_probe(registry.get_trainable(spec.method), folder)
    load_before = os.getloadavg()[0]
    with mock.patch.object(registry, "get_trainable", return_value=probed):
        outcome = run_study(spec, spec_text=text)
    load_after = os.getloadavg()[0]
    return Setting(
        concurrency=concurrency,
        outcome=outcome,
        setup_threads=setup_threads,
        results=trial_results(Path(spec.storage_path) / spec.name),
        spans=driver_spans(spec.tracking_uri, spec.name),
        probes=_probes(folder),
        loadavg=(load_before, load_after),
    )


def _record(setting: Setting, epochs: int) -> dict[str, Any]:
    outcome = setting.outcome
    wall = float(outcome.tune_seconds)
    work = {trial: train_eval_seconds(rows) for trial, rows in setting.results.items()}
    count = max(len(work), 1)
    in_trial = [end - start - work[t] for t, (start, end) in setting.spans.items() if t in work]
    spans = list(setting.spans.values())
    span = max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0
    threads = [p["torch_threads"] for p in setting.probes]
    return {
        "bench": BENCH,
        "concurrency": setting.concurrency,
        "trials": outcome.trials,
        "failed": outcome.failed,
        "with_results": len(setting.results),
        "epochs": epochs,
        "wall_s": round(wall, 3),
        "trials_per_hour": round(outcome.trials / wall * 3600, 2) if wall > 0 else None,
        "train_eval_s": round(sum(work.values()) / count, 3),
        "overhead_s": round((wall * setting.concurrency - sum(work.values())) / count, 3),
        "overhead_in_trial_s": round(sum(in_trial) / len(in_trial), 3) if in_trial else None,
        "fixed_s": round(wall - span, 3),
        "max_overlap": _max_overlap(spans),
        "teacher_seconds": round(float(outcome.teacher_seconds), 3),
        "setup_threads": setting.setup_threads,
        "torch_threads": threads,
        "interop_threads": sorted({p["interop_threads"] for p in setting.probes}),
        "omp_num_threads": sorted({str(p["omp_num_threads"]) for p in setting.probes}),
        "cpu_affinity": sorted({p["cpu_affinity"] for p in setting.probes}),
        "loadavg_1m_before_after": [round(v, 2) for v in setting.loadavg],
    }


def _complete(setting: Setting) -> bool:
    outcome = setting.outcome
    return bool(outcome.failed == 0 and len(setting.results) == outcome.trials > 0)


def _threads_ok(setting: Setting) -> bool:
    """Every trial reported, from inside, training on exactly one torch thread."""
    threads = [p["torch_threads"] for p in setting.probes]
    return len(threads) == setting.outcome.trials and all(t == 1 for t in threads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=4, help="per setting (default 4)")
    parser.add_argument("--epochs", type=int, default=2, help="per trial (default 2)")
    parser.add_argument("--train-size", type=int, default=4000, help="the demo's: 4000")
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--baseline-steps", type=int, default=60, help="0: no CPU baseline")
    parser.add_argument("--set", action="append", default=[], help="more spec overrides")
    parser.add_argument("--keep", type=Path, default=None, help="keep the studies here")
    args = parser.parse_args(argv)
    if min(args.trials, args.epochs, args.train_size, args.teacher_epochs) < 1:
        parser.error("--trials, --epochs, --train-size, --teacher-epochs must be >= 1")

    import ray

    from study.presets import DEMO_SPEC
    from study.spec import read_spec_text

    started = time.monotonic()
    baseline = _cpu_parallel(args.baseline_steps) if args.baseline_steps > 0 else None
    settings: list[Setting] = []
    with contextlib.ExitStack() as stack:
        root = study_root(stack, args.keep, prefix=f"{BENCH}-")
        text, data = read_spec_text(DEMO_SPEC)
        # Ray's progress table and the trials' output go to stderr: stdout is JSON lines only.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        ray_started = time.monotonic()
        # "local": a fresh Ray of our own; no address would attach to any Ray already running here.
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
        stack.callback(ray.shutdown)
        ray_init_seconds = time.monotonic() - ray_started
        ray_cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        for concurrency in SETTINGS:
            settings.append(_run_setting(args, root, concurrency, text, data))

    records = [_record(setting, args.epochs) for setting in settings]
    for record in records:
        emit(record)
    one, two = records
    rates = (one["trials_per_hour"], two["trials_per_hour"])
    speedup = round(rates[1] / rates[0], 3) if None not in rates else None
    slowdown = (
        round(two["train_eval_s"] / one["train_eval_s"], 3) if one["train_eval_s"] > 0 else None
    )
    cpu: dict[str, Any] = {"cpu_parallel_slowdown": None, "cpu_baseline_s": None}
    if baseline is not None:
        alone, pair = baseline
        cpu = {
            "cpu_parallel_slowdown": round(sum(pair) / len(pair) / alone, 3),
            "cpu_baseline_s": {"alone": round(alone, 3), "pair": [round(v, 3) for v in pair]},
        }
    complete = all(_complete(s) for s in settings)
    threads_ok = all(_threads_ok(s) for s in settings)
    emit(
        {
            "bench": BENCH,
            "summary": True,
            "trials": args.trials,
            "epochs": args.epochs,
            "train_size": args.train_size,
            "trials_per_hour": {str(r["concurrency"]): r["trials_per_hour"] for r in records},
            "speedup": speedup,
            "work_slowdown": slowdown,
            "overhead_s": {str(r["concurrency"]): r["overhead_s"] for r in records},
            **cpu,
            "threads_ok": threads_ok,
            "ray_cpus": ray_cpus,
            "cpu_count": os.cpu_count(),
            "ray_init_seconds": round(ray_init_seconds, 3),
            "bench_seconds": round(time.monotonic() - started, 3),
            "target": TARGET_SPEEDUP,
            "met": complete and speedup is not None and speedup >= TARGET_SPEEDUP,
            **environment("cpu"),
        }
    )
    return 0 if complete and threads_ok else 1


if __name__ == "__main__":
    sys.exit(main())
