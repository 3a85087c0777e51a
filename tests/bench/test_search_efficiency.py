"""``bench.search_efficiency`` on a small synthetic table, through its command line (tests do
not import bench): the JSON lines' invariants, and one random-sampler run recomputed by brute
force from its trace and the table."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from study.presets import DEMO_SPEC
from trainables.matching_kinds import MATCHING_KINDS

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
WIDTHS = (2, 4, 8)
BETAS = (0.2, 20.0)
OBJECTIVES = {"map": "max", "attr_auc": "max", "params": "min"}


def _configs() -> list[dict[str, Any]]:
    """The distillation space's grid, its `when` conditions honoured."""
    configs: list[dict[str, Any]] = [{"matching": "none", "student_width": w} for w in WIDTHS]
    matched = [k for k in MATCHING_KINDS if k != "none"]
    for kind, beta, width in itertools.product(matched, BETAS, WIDTHS):
        config: dict[str, Any] = {"matching": kind, "beta": beta, "student_width": width}
        if kind == "sswa":
            config["drop_p"] = 0.3
        configs.append(config)
    return configs


def _final(config: dict[str, Any]) -> dict[str, float]:
    """Made-up trade-offs: wider students map better, matching helps attr_auc, costs map."""
    width = config["student_width"]
    beta = config.get("beta", 0.0)
    kind = MATCHING_KINDS.index(config["matching"])
    return {
        "map": 70.0 - 4.0 * width - 0.3 * beta + kind,
        "attr_auc": 85.0 + kind * 2.0 + math.log1p(beta) - 0.5 * width,
        "params": 600000.0 / width**2,
    }


def _write_table(path: Path) -> None:
    rows = []
    for config in _configs():
        final = _final(config)
        diverges = (
            config["matching"] == "sswa" and config["beta"] == 20.0 and config["student_width"] == 8
        )
        for epoch in range(1, EPOCHS + 1):
            share = epoch / EPOCHS
            row: dict[str, Any] = {
                "matching": config["matching"],
                "beta": config.get("beta"),
                "drop_p": config.get("drop_p"),
                "student_width": config["student_width"],
                "epoch": epoch,
                "map": final["map"] * share,
                "attr_auc": final["attr_auc"] * (0.8 + 0.2 * share),
                "params": final["params"],
                "seconds": 10.0 / config["student_width"],
                "diverged": False,
            }
            if config["matching"] == "none" and config["student_width"] == 4:
                row["attr_auc"] = math.nan  # no correctly predicted pair: NaN, never on the front
            rows.append(row)
            if diverges and epoch == 2:
                row.update(map=None, attr_auc=None, diverged=True)
                break
    pq.write_table(pa.Table.from_pylist(rows), path)


def _run(table: Path, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.search_efficiency", "--table", str(table), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search") / "table.parquet"
    _write_table(path)
    return path


@pytest.fixture(scope="module")
def lines(table: Path) -> list[dict[str, Any]]:
    return _run(
        table,
        "--budgets",
        "8:2",
        "--seeds",
        "2",
        "--samplers",
        "random,tpe",
        "--schedulers",
        "none,asha,mo_asha",
        "--grace-period",
        "1",
        "--trace",
    )


def _runs(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if not line.get("summary")]


def test_every_case_runs_once_and_is_summarised(lines: list[dict[str, Any]]) -> None:
    runs = _runs(lines)
    assert len(runs) == 2 * 3 * 2
    cells = [line for line in lines if line.get("summary") and "sampler" in line]
    assert len(cells) == 2 * 3
    assert all(cell["runs"] == 2 for cell in cells)


def test_hypervolume_lies_in_0_1_and_grows_with_compute(lines: list[dict[str, Any]]) -> None:
    for run in _runs(lines):
        history = run["history"]
        assert all(0.0 <= h[2] <= 1.0 for h in history)
        assert [h[0] for h in history] == sorted(h[0] for h in history)
        assert [h[2] for h in history] == sorted(h[2] for h in history)
        assert run["final_hv"] == (history[-1][2] if history else 0.0)
        at = [run["hv_at"][k] for k in ("0.25", "0.5", "1")]
        assert at == sorted(at)


def test_trials_and_epochs_add_up(lines: list[dict[str, Any]]) -> None:
    for run in _runs(lines):
        trace = run["trace"]
        assert len(trace) == run["trials"] == 8
        assert run["epochs"] == sum(t["epochs"] for t in trace)
        assert run["complete"] + run["stopped"] + run["failed"] == 8
        # The demo's enqueued settings first, as the service enqueues them.
        enqueued = [p["matching"] for p in yaml.safe_load(DEMO_SPEC.read_text())["enqueue"]]
        assert [t["config"]["matching"] for t in trace[: len(enqueued)]] == enqueued
        for t in trace:  # the space's `when`: beta with a matching loss, drop_p with sswa
            assert ("beta" in t["config"]) == (t["config"]["matching"] != "none")
            assert ("drop_p" in t["config"]) == (t["config"]["matching"] == "sswa")
        if run["scheduler"] == "none":
            assert run["stopped"] == 0
            assert all(t["epochs"] == EPOCHS or t["state"] == "failed" for t in trace)


def test_asha_saves_epochs_over_no_stopping(lines: list[dict[str, Any]]) -> None:
    runs = _runs(lines)
    for sampler, seed in itertools.product(("random", "tpe"), (0, 1)):
        spent = {
            r["scheduler"]: r["epochs"]
            for r in runs
            if (r["sampler"], r["seed"]) == (sampler, seed)
        }
        assert spent["asha"] <= spent["none"]
        assert spent["mo_asha"] <= spent["none"]


def _nearest(config: dict[str, Any]) -> dict[str, Any]:
    """The table's point nearest ``config``: beta on a log scale, drop_p has one value."""
    point = {"matching": config["matching"], "student_width": config["student_width"]}
    if "beta" in config:
        point["beta"] = min(BETAS, key=lambda b: (abs(math.log(config["beta"]) - math.log(b)), b))
    if "drop_p" in config:
        point["drop_p"] = 0.3
    return point


def _brute_hypervolume(points: list[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    """Volume dominated by ``points`` (all maximised) above ``reference``: every cell of the
    grid their coordinates span, counted when some point dominates its upper corner."""
    points = [p for p in points if all(x > r for x, r in zip(p, reference, strict=True))]
    axes = [sorted({r, *(p[i] for p in points)}) for i, r in enumerate(reference)]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        upper = [axes[i][c + 1] for i, c in enumerate(cell)]
        if any(all(p[i] >= upper[i] for i in range(3)) for p in points):
            total += math.prod(axes[i][c + 1] - axes[i][c] for i, c in enumerate(cell))
    return total


def _signed(values: dict[str, float]) -> tuple[float, ...] | None:
    signed = tuple(values[n] if d == "max" else -values[n] for n, d in OBJECTIVES.items())
    return None if any(math.isnan(v) for v in signed) else signed


def test_random_matches_a_brute_force_recomputation(lines: list[dict[str, Any]]) -> None:
    run = next(
        r
        for r in _runs(lines)
        if (r["sampler"], r["scheduler"], r["seed"]) == ("random", "none", 0)
    )
    by_point = {}
    for config in _configs():
        diverges = (
            config["matching"] == "sswa" and config["beta"] == 20.0 and config["student_width"] == 8
        )
        if not diverges:
            values = _final(config)
            if config["matching"] == "none" and config["student_width"] == 4:
                values["attr_auc"] = math.nan
            by_point[json.dumps(config, sort_keys=True)] = values
    finals = [s for s in map(_signed, by_point.values()) if s is not None]
    # default_reference: the worst value, 10% of the range further out.
    reference = tuple(
        min(p[i] for p in finals) - 0.1 * (max(p[i] for p in finals) - min(p[i] for p in finals))
        for i in range(3)
    )
    best = _brute_hypervolume(finals, reference)
    found = []
    for trial in run["trace"]:
        key = json.dumps(_nearest(trial["config"]), sort_keys=True)
        if key not in by_point:
            assert trial["state"] == "failed"
            continue
        assert trial["state"] == "complete"
        expected = by_point[key]
        assert trial["values"]["params"] == pytest.approx(expected["params"])
        signed = _signed(trial["values"])
        if signed is not None:
            found.append(signed)
    assert run["final_hv"] == pytest.approx(_brute_hypervolume(found, reference) / best, abs=1e-6)


def test_a_table_without_a_searched_choice_is_refused(tmp_path: Path) -> None:
    rows = [
        {
            "matching": "none",
            "beta": None,
            "drop_p": None,
            "student_width": 2,
            "epoch": 1,
            "map": 1.0,
            "attr_auc": 1.0,
            "params": 1.0,
            "seconds": 1.0,
            "diverged": False,
        }
    ]
    path = tmp_path / "small.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    done = subprocess.run(
        [sys.executable, "-m", "bench.search_efficiency", "--table", str(path), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "no grid point for" in done.stderr
