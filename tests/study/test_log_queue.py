"""LogQueue: order kept through an outage, refusals dropped, leftovers spooled and reloaded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from study.log_queue import LogQueue, Record, is_unreachable


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


def test_a_refused_record_is_dropped_and_the_rest_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = FlakyStore()
    queue = LogQueue(store, spool=tmp_path / "spool.jsonl")
    queue.put({"op": "x", "n": 0})
    queue.put({"op": "bad", "n": 1, "refuse": True})
    queue.put({"op": "x", "n": 2})
    assert queue.flush(10.0)
    assert store.applied == [0, 2]
    assert "MLflow refused bad (INVALID_PARAMETER_VALUE: param changed)" in capsys.readouterr().err
    queue.close(1.0)


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
