"""A quantization study end to end: local Ray, OptunaSearch, a SQLite MLflow store, apc pareto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from study.cli import main

pytestmark = pytest.mark.integration

NAME = "quantized"


@pytest.fixture(scope="module")
def study(local_store: tuple[str, Path]) -> tuple[str, Path]:
    """A finished two-trial study (QAT with SSWA, static int8): its store URI and folder."""
    uri, root = local_store
    code = main(
        [
            "run",
            "--name",
            NAME,
            "--trials",
            "2",
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
            "--set",
            "method=quantization",
            "--set",
            "search_space=quantization",
            "--set",
            "objectives={map: max, model_bytes: min, latency_ms: min}",
            "--set",
            "enqueue=[{mode: qat_int8, matching: sswa, beta: 1.0, drop_p: 0.3}, "
            "{mode: static_int8, calibration_size: 32, observer: minmax}]",
        ]
    )
    assert code == 0
    return uri, root


def _trials(uri: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(NAME)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags["apc.role"] == "trial"]
    assert [r.info.status for r in trials] == ["FINISHED", "FINISHED"]
    # study.tracking.SEARCHED_PARAMS does not log `mode` (yet): QAT is the matched trial.
    return {("qat_int8" if "matching" in r.data.params else "ptq"): r for r in trials}


def test_mlflow_holds_the_int8_trials_metrics_and_models(study: tuple[str, Path]) -> None:
    import torch
    import torchao  # noqa: F401  # registers the quantized_decomposed ops the int8 model.pt2 uses
    from mlflow.tracking import MlflowClient

    uri, root = study
    trials = _trials(uri)
    assert set(trials) == {"qat_int8", "ptq"}
    qat, static = trials["qat_int8"], trials["ptq"]
    assert (qat.data.params["method"], qat.data.params["matching"]) == ("quantization", "sswa")
    assert "matching" not in static.data.params  # conditional: PTQ is never matched
    client = MlflowClient(tracking_uri=uri)
    for run in (qat, static):
        metrics = run.data.metrics
        assert {
            "map",
            "attr_cos",
            "attr_l2",
            "params",
            "model_bytes",
            "flops",
            "latency_ms",
            "latency_ms_b32",
            "param_fraction",
        } <= set(metrics)
        # int8 weights: about a quarter of the float32 teacher's (BN folded) state.
        assert metrics["model_bytes"] < 0.4 * 4 * metrics["params"]
        history = client.get_metric_history(run.info.run_id, "map")
        assert sorted(m.step for m in history) == [0, 1]
        path = client.download_artifacts(run.info.run_id, "model/model.pt2", str(root))
        model = torch.export.load(path).module()
        with torch.no_grad():
            assert model(torch.zeros(3, 3, 32, 32)).shape[0] == 3
    # PTQ measures once and reports it every epoch.
    values = [m.value for m in client.get_metric_history(static.info.run_id, "map")]
    assert values[0] == values[1]


def test_pareto_over_the_quantized_trials(
    study: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from analysis.pareto import pareto_front
    from analysis.runs import load_trials

    uri, _ = study
    table = load_trials(uri, NAME)
    front = pareto_front(table, {"map": "max", "model_bytes": "min", "latency_ms": "min"})
    assert 1 <= front.num_rows <= 2
    capsys.readouterr()
    assert (
        main(
            [
                "pareto",
                NAME,
                "--tracking-uri",
                uri,
                "--objectives",
                "map:max,model_bytes:min",
                "--format",
                "csv",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert "model_bytes" in lines[0]
    assert len(lines) == 1 + front.num_rows or len(lines) >= 2
