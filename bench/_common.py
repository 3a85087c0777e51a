"""Helpers shared by the benchmarks: JSON-lines output, interleaved timing, and what a
finished study left (Tune's results per trial, the driver's span per trial)."""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "driver_spans",
    "emit",
    "environment",
    "inference_call",
    "median",
    "study_root",
    "time_interleaved",
    "train_eval_seconds",
    "trial_results",
]


def inference_call(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], object]:
    """A no-argument call of ``model(images)`` under ``inference_mode``, for the timers."""

    def run() -> object:
        with torch.inference_mode():
            return model(images)

    return run


def emit(record: Mapping[str, Any]) -> None:
    """Print one JSON object on its own line (the benchmarks' output format)."""
    print(json.dumps(dict(record), sort_keys=False), flush=True)


def environment(device: str) -> dict[str, Any]:
    """Facts that make a benchmark figure comparable: versions, threads, device."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "cpu": platform.processor() or platform.machine(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def time_interleaved(
    cases: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 1,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each case, measured round-robin so drift hits all cases alike."""
    sync = synchronize or (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for index in range(warmup + rounds):
        for name, case in cases.items():
            sync()
            start = time.perf_counter()
            case()
            sync()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
        print(f"round {index + 1}/{warmup + rounds} done", file=sys.stderr, flush=True)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def train_eval_seconds(rows: Sequence[Mapping[str, Any]]) -> float:
    """A trial's own work: its results' summed ``time_train_s`` + ``time_eval_s``."""
    return sum(float(r["time_train_s"]) + float(r["time_eval_s"]) for r in rows)


def study_root(stack: contextlib.ExitStack, keep: Path | None, *, prefix: str) -> Path:
    """Where a bench's studies go: ``keep`` (created) or a temporary folder ``stack`` removes."""
    if keep is not None:
        root = keep.resolve()
        root.mkdir(parents=True, exist_ok=True)
        return root
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))


def trial_results(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result each trial reported, from Tune's ``result.json`` files, by trial id."""
    results: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [row for row in rows if "time_train_s" in row]
        if rows:
            results[str(rows[0]["trial_id"])] = rows
    return results


def driver_spans(tracking_uri: str, name: str) -> dict[str, tuple[float, float]]:
    """Each trial's (start, end) in the driver, epoch seconds, from its MLflow run."""
    from mlflow.tracking import MlflowClient

    from analysis.layout import TRIAL_FILTER, TRIAL_TAG

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], filter_string=TRIAL_FILTER)
    return {
        run.data.tags[TRIAL_TAG]: (run.info.start_time / 1000.0, run.info.end_time / 1000.0)
        for run in runs
        if run.info.end_time is not None
    }
