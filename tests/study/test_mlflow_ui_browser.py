"""MLflow's UI in a real browser, over a real study: headless Chromium, driven by Playwright,
on a real ``mlflow server`` (127.0.0.1, SQLite, artifacts in the test's folder) that a tiny
``apc run`` and ``apc report`` wrote to. It opens the study's runs at the link ``apc ui``
prints and checks what the page shows (its DOM text, not only HTTP answers): the study run
with its trial runs nested, the search ``tags.apc.pareto = "true"`` listing exactly the front
``apc pareto`` prints, a trial's metric charts and ``report/report.html`` in the artifact
viewer. Screenshots of each page go to the test's tmp folder (``runs.png``,
``filtered_runs.png``, ``metric_chart.png``, ``report.png``); docs/images/mlflow_ui_front.png
is one of them.

Chromium is the system's, never a download (so no ``playwright install``): on Debian or
Ubuntu ``sudo apt-get install chromium`` puts it at /usr/bin/chromium; elsewhere point
``APC_CHROMIUM`` at a Chromium or Chrome binary. Without one, or when Playwright cannot start
it, the tests skip and say so. Slow tier: ``make test-slow``, or
``pytest -m slow tests/study/test_mlflow_ui_browser.py`` (a few minutes on 2 cores, most of it
the study).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from mlflow.tracking import MlflowClient

from analysis.layout import (
    PARETO_TAG,
    REPORT_DIR,
    STUDY_ROLE,
    TEACHER_RUN_NAME,
    TRIAL_FILTER,
    front_filter,
    role_filter,
)
from study.cli import main
from study.cli.ui import study_links
from tests.study.conftest import tiny_run_args
from tests.study.mlflow_outage import MlflowServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "browser"
#: The Chromium binary: Debian's package, or what APC_CHROMIUM names.
CHROMIUM = Path(os.environ.get("APC_CHROMIUM", "/usr/bin/chromium"))
INSTALL_HINT = (
    "needs a system Chromium (Playwright downloads none here): `sudo apt-get install chromium` "
    "(Debian/Ubuntu, /usr/bin/chromium), or set APC_CHROMIUM to a Chromium or Chrome binary"
)
#: Headless, offline, nothing of the browser's own: no GPU, sandbox, sync or component updates.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: How long a page gets to show what is asked of it (the machine may be busy).
WAIT_MS = 90_000
#: The runs grid's rows: AG Grid rows carrying the run id, in the pinned "Run Name" column.
ROWS = ".ag-pinned-left-cols-container [role=row][row-id]"
#: The button that expands (or collapses) a parent run's nested runs in the runs grid.
EXPAND = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, or a skip that says how to install it."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: the MLflow UI browser test {INSTALL_HINT}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS
            )
        except sync_api.Error as error:
            first = str(error).strip().splitlines()[0]
            pytest.skip(f"Playwright could not start {CHROMIUM} ({first}); the test {INSTALL_HINT}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def served(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real ``mlflow server`` over a tiny real study (three trials, the third sampled) and
    its ``apc report``. Asks for the browser first: no study is run for a test that skips."""
    root = tmp_path_factory.mktemp("mlflow_ui_browser")
    server = MlflowServer(root)
    server.start()
    out = io.StringIO()
    try:
        enqueue = "enqueue=[{matching: none, student_width: 2}, {matching: swa, beta: 1.0, student_width: 4}]"
        with contextlib.redirect_stdout(out):
            code = main(tiny_run_args(NAME, server.uri, root / "results", enqueue))
            assert code == 0, out.getvalue()
            code = main(["report", NAME, "--tracking-uri", server.uri])
            assert code == 0, out.getvalue()
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name(NAME)
        assert experiment is not None
        experiment_id = experiment.experiment_id
        (parent,) = client.search_runs([experiment_id], filter_string=role_filter(STUDY_ROLE))
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        yield {
            "uri": server.uri,
            "client": client,
            "experiment_id": experiment_id,
            "parent": parent,
            "nested": {run.info.run_id: run for run in runs},
            "trials": {
                run.info.run_id: run for run in client.search_runs([experiment_id], TRIAL_FILTER)
            },
        }
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser, served: dict[str, Any]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _runs_link(served: dict[str, Any]) -> str:
    """The link ``apc ui`` prints for the study: its runs in the UI's model-training view."""
    ((name, link),) = study_links(served["uri"], served["uri"], names=[NAME])
    assert name == NAME
    return link


def _close_assistant(page: Page) -> None:
    """Close MLflow 3's assistant side panel, when it is open, so screenshots show the page."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count() and close.first.is_visible():
        close.first.click()


def _rows(page: Page) -> dict[str, tuple[str, float]]:
    """The runs grid's rows: run id -> (run name as shown, x of the name's left edge)."""
    # Read in one pass inside the page: the grid re-renders while it loads, and a row found by
    # one locator call can be gone by the next (a 90 s wait on a row that no longer exists).
    rows: list[dict[str, Any]] = page.locator(ROWS).evaluate_all(
        """rows => rows.map(row => {
            const id = row.getAttribute("row-id") || "";
            const link = row.querySelector(`a[href$="/runs/${id}"]`);
            const box = link ? link.getBoundingClientRect() : null;
            return {id, name: link ? link.innerText.trim() : "", x: box ? box.x : -1};
        })"""
    )
    return {row["id"]: (row["name"], float(row["x"])) for row in rows}


def _nested(page: Page, parent_id: str, want: set[str]) -> dict[str, tuple[int, str]]:
    """The grid's rows, run id -> (nesting level, run name), once they are the study run
    ``parent_id`` and ``want`` (the study run's row expanded when it shows alone): level 0 for
    the study run, 1 for a row indented under it."""
    page.locator(f'{ROWS}[row-id="{parent_id}"]').wait_for()
    deadline = time.monotonic() + WAIT_MS / 1000
    clicked = 0.0
    rows = _rows(page)
    while set(rows) != {parent_id} | want and time.monotonic() < deadline:
        if set(rows) == {parent_id} and time.monotonic() - clicked > 3:
            page.locator(f'{ROWS}[row-id="{parent_id}"] {EXPAND}').click()
            clicked = time.monotonic()
        page.wait_for_timeout(250)
        rows = _rows(page)
    indent = rows[parent_id][1] if parent_id in rows else 0.0
    return {run_id: (int(x > indent), name) for run_id, (name, x) in rows.items()}


def _printed_front(
    uri: str, capsys: pytest.CaptureFixture[str], *args: str
) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["pareto", NAME, "--tracking-uri", uri, "--format", "json", *args]) == 0
    front: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return front


def _rest_search(served: dict[str, Any], filter_string: str) -> set[str]:
    """The run ids the server's search answers ``filter_string`` with (the UI's REST call)."""
    response = requests.post(
        f"{served['uri']}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [served["experiment_id"]], "filter": filter_string},
        timeout=30,
    )
    response.raise_for_status()
    return {run["info"]["run_id"] for run in response.json().get("runs", [])}


def test_the_runs_page_shows_the_study_run_with_its_trials_nested(
    page: Page, served: dict[str, Any], tmp_path: Path
) -> None:
    page.goto(_runs_link(served))
    parent = served["parent"]
    rows = _nested(page, parent.info.run_id, set(served["nested"]))
    _close_assistant(page)
    page.screenshot(path=tmp_path / "runs.png")
    expected = {parent.info.run_id: (0, NAME)}
    expected |= {run_id: (1, run.info.run_name) for run_id, run in served["nested"].items()}
    assert rows == expected
    names = sorted(name for level, name in rows.values() if level == 1)
    trials = sorted(run.info.run_name for run in served["trials"].values())
    assert names == sorted([TEACHER_RUN_NAME, *trials])
    assert len(trials) == 3
    page.get_by_text(f"{len(rows)} matching runs").wait_for()


def test_the_pareto_search_lists_exactly_the_front_apc_pareto_prints(
    page: Page, served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = served["uri"]
    parent_id = served["parent"].info.run_id
    # Typed into the search box, as a user would; the front `apc run` marked.
    page.goto(_runs_link(served))
    _nested(page, parent_id, set(served["nested"]))
    _close_assistant(page)
    box = page.get_by_test_id("search-box")
    box.fill(front_filter())
    box.press("Enter")
    page.wait_for_url(re.compile(r"searchFilter=tags\.apc\.pareto"))

    def shown(front: list[dict[str, Any]]) -> dict[str, Any]:
        """The grid's rows once they are the front's trials under their study run."""
        rows = _nested(page, parent_id, {row["run_id"] for row in front})
        # The UI shows a matching nested run under its study run (a row it adds to the grid,
        # though the study run itself does not match): the front's trials are the nested rows.
        assert rows.pop(parent_id) == (0, NAME)
        assert rows == {row["run_id"]: (1, row["trial"]) for row in front}
        assert _rest_search(served, front_filter()) == set(rows)
        page.get_by_text(f"{len(rows) + 1} matching runs").wait_for()  # the UI counts its head
        return rows

    printed = _printed_front(uri, capsys)
    assert printed, "apc run marked an empty front"
    shown(printed)
    assert page.get_by_test_id("search-box").input_value() == 'tags.apc.pareto = "true"'
    page.screenshot(path=tmp_path / "filtered_runs.png")

    # Another front, marked with `apc pareto --mark`: fewest parameters only, so not every
    # trial (the enqueued student_width 2 has more than the enqueued 4: never on it). The page,
    # reloaded with the search in its URL, lists that front and nothing else.
    capsys.readouterr()
    assert (
        main(["pareto", NAME, "--tracking-uri", uri, "--objectives", "params:min", "--mark"]) == 0
    )
    marked = _printed_front(uri, capsys, "--objectives", "params:min")
    assert 0 < len(marked) < len(served["trials"])
    off = set(served["trials"]) - {row["run_id"] for row in marked}
    assert _rest_search(served, f'tags.{PARETO_TAG} = "false"') == off
    page.reload()
    shown(marked)
    page.screenshot(path=tmp_path / "filtered_runs_params.png")


def test_a_trial_run_draws_its_metric_charts(
    page: Page, served: dict[str, Any], tmp_path: Path
) -> None:
    run_id, trial = sorted(served["trials"].items())[0]
    value = trial.data.metrics["map"]
    link = _runs_link(served).replace("/runs?", f"/runs/{run_id}/model-metrics?")
    page.goto(link)
    _close_assistant(page)
    # The search box keeps the map charts (map, map_samples) among the run's 16 metrics.
    page.get_by_placeholder("Search metric charts").fill("map")
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.locator('h4[title="map"]')
    )
    chart = card.locator(".js-plotly-plot svg.main-svg").first
    chart.wait_for()
    assert page.locator("h2, h1").filter(has_text=trial.info.run_name).count()
    assert page.get_by_role("tab", name="Model metrics").get_attribute("aria-selected") == "true"
    text = card.inner_text()
    assert text.splitlines()[0] == "map"
    # One epoch, one value: a bar labelled with it (two decimals), the run's name as legend.
    assert f"{value:.2f}" in text
    assert trial.info.run_name in text
    box = chart.bounding_box()
    assert box is not None
    assert min(box["width"], box["height"]) > 100
    page.screenshot(path=tmp_path / "metric_chart.png")


def _report_table(served: dict[str, Any], tmp_path: Path) -> list[list[str]]:
    """The rows of report.md's first table, cell by cell (report.html's table shows them)."""
    client: MlflowClient = served["client"]
    path = client.download_artifacts(
        served["parent"].info.run_id, f"{REPORT_DIR}/report.md", str(tmp_path)
    )
    lines = Path(path).read_text().split("\n\n| ", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[cell.strip() for cell in line.strip("| ").split(" | ")] for line in lines[2:]]


def test_the_report_page_renders_in_the_artifact_viewer(
    page: Page, served: dict[str, Any], tmp_path: Path
) -> None:
    expected = _report_table(served, tmp_path)
    assert [row[1] for row in expected[:2]] == ["teacher", "naive"]  # then a row per kind
    parent_id = served["parent"].info.run_id
    link = _runs_link(served).replace(
        "/runs?", f"/runs/{parent_id}/artifacts/{REPORT_DIR}/report.html?"
    )
    page.goto(link)
    frame = page.frame_locator("iframe.mlflow-html-iframe")
    table = frame.locator("table").first
    table.wait_for()
    _close_assistant(page)
    path = f"mlflow-artifacts:/{served['experiment_id']}/{parent_id}/artifacts/{REPORT_DIR}/report.html"
    assert f"Path: {path}" in page.locator("body").inner_text()
    assert frame.locator("h1").first.inner_text() == f"Report: study {NAME}"
    header = [cell.strip() for cell in table.locator("th").all_inner_texts()]
    assert header[:3] == ["method", "row", "setting"]
    shown = [
        [cell.strip() for cell in row.locator("td").all_inner_texts()]
        for row in table.locator("tr").all()[1:]
    ]
    assert shown == expected
    trials = {run.info.run_name for run in served["trials"].values()}
    assert shown[0][4] == TEACHER_RUN_NAME
    assert {row[4] for row in shown[1:]} - trials <= {"-"}  # "-": no trial of that kind
    # The plots are inline data: URIs, decoded in the sandboxed frame.
    images = frame.locator("img")
    assert images.count() >= 3
    for image in images.all():
        image.scroll_into_view_if_needed()
        assert image.evaluate("image => image.decode().then(() => image.naturalWidth)") > 0
    table.scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "report.png")
