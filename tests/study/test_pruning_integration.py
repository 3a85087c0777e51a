"""A one-trial study per pruning method: local Ray, OptunaSearch, a SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from study.cli import main

pytestmark = pytest.mark.integration

SIZE_METRICS = {"params", "nonzero_params", "model_bytes", "flops", "latency_ms", "param_fraction"}


@pytest.fixture(scope="module")
def store(local_store: tuple[str, Path]) -> tuple[str, Path]:
    """Both studies in one store, on one local Ray (tests/study/conftest.py)."""
    return local_store


def _run(store: tuple[str, Path], name: str, *overrides: str) -> None:
    uri, root = store
    code = main(
        [
            "run",
            "--name",
            name,
            "--trials",
            "1",
            "--tracking-uri",
            uri,
            "--storage",
            str(root / "results"),
            "--set",
            "epochs=2",
            "--set",
            "dataset.train_size=32",
            "--set",
            "dataset.val_size=16",
            "--set",
            "dataset.image_size=32",
            "--set",
            "teacher.epochs=1",
            "--set",
            "training.batch_size=16",
            "--set",
            "max_concurrent=1",
            *[arg for value in overrides for arg in ("--set", value)],
        ]
    )
    assert code == 0


def _trial(store: tuple[str, Path], name: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store[0])
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags["apc.role"] == "trial"]
    assert len(trials) == 1
    assert trials[0].info.status == "FINISHED"
    return trials[0]


def _check_model_artifact(store: tuple[str, Path], run_id: str, params: float) -> None:
    """The trial's compressed model is an artifact that loads with plain PyTorch."""
    import torch
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store[0])
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.pt2"]
    path = client.download_artifacts(run_id, "model/model.pt2", str(store[1]))
    model = torch.export.load(path).module()
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 32, 32)).shape[0] == 3


def _check_evaluation_artifacts(store: tuple[str, Path], run: Any, method: str) -> None:
    """The last epoch's further attribution metrics, per-sample Parquet and overlays."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from trainables.overlays import load_overlay_maps

    client = MlflowClient(tracking_uri=store[0])
    run_id = run.info.run_id
    metrics = run.data.metrics
    for name in ("attr_auc", "point_acc", "attr_cos", "attr_l2"):
        assert f"{name}_{method}" in metrics
        # Measured once, with the last epoch; Grad-CAM's every epoch.
        steps = [m.step for m in client.get_metric_history(run_id, f"{name}_{method}")]
        assert steps == [1]
    assert 0.0 <= metrics["pie_fraction"] <= 1.0
    table = pq.read_table(
        client.download_artifacts(run_id, "evaluation/per_sample.parquet", str(store[1]))
    )
    assert table.num_rows == 16  # dataset.val_size
    assert {"index", "teacher_agree", f"attr_cos_{method}", "predicted"} <= set(table.schema.names)
    agree = table.column("teacher_agree").to_numpy(zero_copy_only=False)
    assert metrics["pie_fraction"] == pytest.approx(1 - agree.mean())
    listed = sorted(a.path for a in client.list_artifacts(run_id, "attributions"))
    assert listed == ["attributions/attribution_maps.npz", "attributions/attribution_overlay.png"]
    maps = load_overlay_maps(client.download_artifacts(run_id, listed[0], str(store[1])))
    assert maps.images.shape == (3, 32, 32, 3)
    assert maps.student.shape == (3, 32, 32)
    teacher = next(
        r
        for r in client.search_runs([run.info.experiment_id])
        if r.data.tags["apc.role"] == "teacher"
    )
    assert f"attr_auc_{method}" in teacher.data.metrics


def test_structured_pruning_study(store: tuple[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    _run(
        store,
        "structured",
        "method=structured_pruning",
        "search_space=structured_pruning",
        "method_options={scheme: paper}",
        "objectives={map: max, flops: min}",
        "enqueue=[{matching: swa, beta: 1.0, prune_rate: 0.5}]",
        "evaluation={attribution_methods: [ebp], overlay_images: 3}",
    )
    run = _trial(store, "structured")
    _check_evaluation_artifacts(store, run, "ebp")
    params, metrics = run.data.params, run.data.metrics
    assert (params["method"], params["prune_rate"], params["matching"]) == (
        "structured_pruning",
        "0.5",
        "swa",
    )
    assert SIZE_METRICS | {"latency_ms_b32", "map"} <= set(metrics)
    assert 0.2 < metrics["param_fraction"] < 0.7
    assert metrics["nonzero_params"] <= metrics["params"]
    history = MlflowClient(store[0]).get_metric_history(run.info.run_id, "flops")
    assert sorted(m.step for m in history) == [0, 1]
    _check_model_artifact(store, run.info.run_id, metrics["params"])


def test_unstructured_pruning_study(store: tuple[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    _run(
        store,
        "unstructured",
        "method=unstructured_pruning",
        "search_space=unstructured_pruning",
        "method_options={steps: 2}",
        "objectives={map: max, nonzero_params: min}",
        "enqueue=[{matching: none, prune_rate: 0.5}]",
    )
    run = _trial(store, "unstructured")
    params, metrics = run.data.params, run.data.metrics
    assert (params["method"], params["prune_rate"]) == ("unstructured_pruning", "0.5")
    assert "beta" not in params
    assert SIZE_METRICS | {"model_bytes_sparse", "sparsity"} <= set(metrics)
    assert metrics["sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert metrics["model_bytes_sparse"] < metrics["model_bytes"]
    history = MlflowClient(store[0]).get_metric_history(run.info.run_id, "sparsity")
    assert [round(m.value, 3) for m in sorted(history, key=lambda m: m.step)] == [0.5, 0.75]
    _check_model_artifact(store, run.info.run_id, metrics["params"])
    # The second study reused the first one's cached teacher.
    assert len(list((store[1] / "results" / "teachers").glob("teacher-*.pt"))) == 1
    # and its teacher run reports what the trained one did, its size included.
    client = MlflowClient(store[0])
    teachers = [
        r
        for name in ("structured", "unstructured")
        for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])
        if r.data.tags["apc.role"] == "teacher"
    ]
    assert len(teachers) == 2
    assert teachers[0].data.metrics["params"] == teachers[1].data.metrics["params"]
    assert teachers[1].data.metrics["map"] == pytest.approx(teachers[0].data.metrics["map"])
