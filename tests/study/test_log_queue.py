"""LogQueue: order kept through an outage, refusals quarantined, leftovers spooled (atomically)
and reloaded, torn lines skipped."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import requests

from study.log_queue import LogQueue, Record, is_unreachable, read_json_lines


class FlakyStore:
    """Applies records, failing with ``error`` while ``down`` is set."""

    def __init__(self) -> None:
        self.applied: list[int] = []
        self.down = threading.Event()
        self.attempts = 0

    def __call__(self, record: Record) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise requests.ConnectionError("Connection refused")
        if record.get("refuse"):
            raise ValueError("INVALID_PARAMETER_VALUE: param changed")
        self.applied.append(record["n"])


def test_records_wait_for_the_store_and_keep_their_order(tmp_path: Path) -> None:
    store = FlakyStore()
    queue = LogQueue(store, spool=tmp_path / "spool.jsonl", max_backoff_s=0.05)
    store.down.set()
    for n in range(5):
        queue.put({"op": "x", "n": n})
    assert not queue.flush(0.5)  # nothing goes through while the store is down
    assert store.applied == []
    assert store.attempts >= 2  # retried, not given up
    store.down.clear()
    assert queue.flush(10.0)
    assert store.applied == [0, 1, 2, 3, 4]
    assert queue.outage_s > 0
    assert queue.close(1.0) == 0
    assert not (tmp_path / "spool.jsonl").exists()


def test_refused_records_are_quarantined_with_their_reason_and_the_rest_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore()
    queue = LogQueue(store, spool=tmp_path / "spool.jsonl")
    with caplog.at_level(logging.WARNING, logger="study.log_queue"):
        queue.put({"op": "x", "n": 0})
        queue.put({"op": "bad", "n": 1, "refuse": True})
        queue.put({"op": "x", "n": 2})
        queue.put({"op": "worse", "n": 3, "refuse": True})
        queue.put({"op": "x", "n": 4})
        assert queue.flush(10.0)
    assert store.applied == [0, 2, 4]
    assert queue.quarantine == tmp_path / "spool.quarantine.jsonl"
    kept = [json.loads(line) for line in queue.quarantine.read_text().splitlines()]
    assert [(k["record"]["n"], k["reason"]) for k in kept] == [
        (1, "ValueError: INVALID_PARAMETER_VALUE: param changed"),
        (3, "ValueError: INVALID_PARAMETER_VALUE: param changed"),
    ]
    assert all(k["at"].endswith("+00:00") for k in kept)
    assert queue.quarantined == 2
    (warning,) = [r.getMessage() for r in caplog.records]  # one warning, not one per record
    assert warning.startswith(
        "apc: MLflow refused a bad record (ValueError: INVALID_PARAMETER_VALUE: param changed); "
        f"it is kept with its reason in {queue.quarantine}"
    )
    assert queue.close(1.0) == 0


def test_what_is_left_at_close_is_spooled_and_reloaded_in_order(tmp_path: Path) -> None:
    store = FlakyStore()
    spool = tmp_path / "study" / "spool.jsonl"
    queue = LogQueue(store, spool=spool, max_backoff_s=0.05)
    store.down.set()
    records = [{"op": "metrics", "n": n, "value": float("nan") if n == 1 else n} for n in range(3)]
    for record in records:
        queue.put(record)
    assert queue.close(0.3) == 3
    loaded = LogQueue.load_spool(spool)
    assert [r["n"] for r in loaded] == [0, 1, 2]
    assert loaded[1]["value"] != loaded[1]["value"]  # NaN survives the round trip
    assert LogQueue.load_spool(tmp_path / "none.jsonl") == []
    assert [p.name for p in spool.parent.iterdir()] == ["spool.jsonl"]  # no temporary left


def test_a_spool_cut_short_while_written_leaves_the_old_one_whole(tmp_path: Path) -> None:
    """Written in place, a spool is truncated first: a driver killed while writing loses the
    records of the earlier spool too. Here the write fails half-way (a record JSON cannot
    hold), as a kill would cut it."""
    spool = tmp_path / "spool.jsonl"
    spool.write_text(json.dumps({"op": "metrics", "n": 0}) + "\n")
    store = FlakyStore()
    store.down.set()
    queue = LogQueue(store, spool=spool, max_backoff_s=0.05)
    queue.put({"op": "metrics", "n": 1})
    queue.put({"op": "metrics", "n": 2, "value": object()})
    with pytest.raises(TypeError, match="not JSON serializable"):
        queue.close(0.2)
    assert [r["n"] for r in LogQueue.load_spool(spool)] == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["spool.jsonl"]  # the temporary is gone


def test_a_torn_last_line_of_a_spool_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool.jsonl"
    whole = [json.dumps({"op": "metrics", "n": n}) for n in range(2)]
    spool.write_text("\n".join(whole) + "\n" + whole[1][:9])  # a kill mid-line
    with caplog.at_level(logging.WARNING, logger="study.log_queue"):
        loaded = LogQueue.load_spool(spool)
    assert [r["n"] for r in loaded] == [0, 1]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"apc: skipped 1 torn line(s) of {spool} (line 3: ")


@pytest.mark.parametrize(
    ("text", "records", "torn"),
    [
        ('{"a": 1}\n{"a": 2}\n', [{"a": 1}, {"a": 2}], []),
        ('{"a": 1}\n{"a": 2', [{"a": 1}], [2]),
        ('{"a": 1}\n\n12\n{"a": 3}\n', [{"a": 1}, {"a": 3}], [3]),  # a prefix that parses
        ("\n", [], []),
    ],
)
def test_json_lines_keep_whole_objects_and_count_the_rest(
    text: str, records: list[dict[str, int]], torn: list[int]
) -> None:
    lines = read_json_lines(text, source="f")
    assert (lines.records, lines.torn) == (records, torn)


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (requests.ConnectionError("refused"), True),
        (requests.Timeout("slow"), True),
        (RuntimeError("API request to http://h/api failed: Max retries exceeded with url"), True),
        (RuntimeError("sqlite3.OperationalError: database is locked"), True),
        (ValueError("INVALID_PARAMETER_VALUE: Changing param values is not allowed"), False),
        (KeyError("no run for trial t1"), False),
    ],
)
def test_which_errors_are_worth_retrying(error: Exception, unreachable: bool) -> None:
    assert is_unreachable(error) is unreachable
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = error
    assert is_unreachable(wrapped) is unreachable  # found through the cause chain
