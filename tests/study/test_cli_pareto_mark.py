"""`apc pareto NAME --mark`: the study's trial runs tagged with the front it printed, so that
MLflow's search `tags.apc.pareto = "true"` lists exactly that front; the study run says which."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis.layout import (
    NOTE_TAG,
    PARETO_FILTER_TAG,
    PARETO_OBJECTIVES_TAG,
    PARETO_RANK_TAG,
    PARETO_TAG,
    front_filter,
)
from study.cli import main
from tests.analysis.mlflow_study import OTHER, STUDY, StudyStore, write_studies

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StudyStore:
    # Its own store: marking writes tags.
    return write_studies(tmp_path_factory.mktemp("marked_store"))


def _printed(store: StudyStore, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """The run ids `apc pareto` prints as CSV, in its order (nothing marked)."""
    capsys.readouterr()
    assert main(["pareto", STUDY, "--tracking-uri", store.uri, "--format", "csv", *args]) == 0
    return [row["run_id"] for row in csv.DictReader(io.StringIO(capsys.readouterr().out))]


def _marked(store: StudyStore) -> tuple[list[str], dict[str, str]]:
    """The run ids MLflow's search for the front finds, by rank, and every trial's mark."""
    client = MlflowClient(tracking_uri=store.uri)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id], filter_string=front_filter())
    ranked = sorted(found, key=lambda r: int(r.data.tags[PARETO_RANK_TAG]))
    marks = {
        run_id: client.get_run(run_id).data.tags.get(PARETO_TAG, "")
        for run_id in store.trial_run_ids.values()
    }
    return [r.info.run_id for r in ranked], marks


def test_mark_tags_exactly_the_printed_front_and_follows_a_filter_change(
    store: StudyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    front = _printed(store, capsys)
    capsys.readouterr()
    assert main(["pareto", STUDY, "--tracking-uri", store.uri, "--mark"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(
        f"marked {len(front)} of {len(store.trial_run_ids)} trial runs of study '{STUDY}' "
        "as on the front ("
    )
    assert out.splitlines()[-1].endswith(f"the UI lists them with: {front_filter()}")
    marked, marks = _marked(store)
    assert marked == front
    assert {r for r, m in marks.items() if m == "true"} == set(front)
    assert {m for r, m in marks.items() if r not in front} == {"false"}
    client = MlflowClient(tracking_uri=store.uri)
    tags = client.get_run(store.parent_run_id).data.tags
    assert tags[PARETO_OBJECTIVES_TAG] == "map:max,attr_auc:max,params:min"
    assert tags[PARETO_FILTER_TAG] == ""
    assert "among all trial runs, marked by `apc pareto --mark`" in tags[NOTE_TAG]

    # Another filter and objectives: the marks follow what was printed, ranks included; CSV
    # on stdout stays CSV (the line about the marks goes to stderr).
    args = ["--filter", "params.matching = 'swa'", "--objectives", "map:max,attr_cos:max"]
    swa = _printed(store, capsys, *args)
    assert set(swa) != set(front)
    code = main(["pareto", STUDY, "--tracking-uri", store.uri, "--format", "csv", *args, "--mark"])
    assert code == 0
    out, err = capsys.readouterr()
    assert [row["run_id"] for row in csv.DictReader(io.StringIO(out))] == swa
    assert err.startswith(f"marked {len(swa)} of ")
    marked, marks = _marked(store)
    assert marked == swa
    assert {r for r, m in marks.items() if m == "true"} == set(swa)
    for run_id in set(front) - set(swa):  # off the front now: no rank left behind
        assert PARETO_RANK_TAG not in client.get_run(run_id).data.tags
    tags = client.get_run(store.parent_run_id).data.tags
    assert tags[PARETO_OBJECTIVES_TAG] == "map:max,attr_cos:max"
    assert tags[PARETO_FILTER_TAG] == "params.matching = 'swa'"
    assert "among the trial runs matching `params.matching = 'swa'`" in tags[NOTE_TAG]
    assert "--filter 'params.matching = '\"'\"'swa'\"'\"''" in tags[NOTE_TAG]

    # Marking the same front again changes nothing.
    assert main(["pareto", STUDY, "--tracking-uri", store.uri, *args, "--mark"]) == 0
    assert "(0 changed;" in capsys.readouterr().out


def test_mark_refuses_several_studies_and_writes_nothing(
    store: StudyStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = store.db.read_bytes()
    code = main(["pareto", STUDY, OTHER, "--tracking-uri", store.uri, "--mark"])
    assert code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "apc pareto: --mark: marks the front of one study, got 2 studies\n"
    assert store.db.read_bytes() == before
