"""An ordered queue of MLflow writes, applied by a background thread that outlives outages.

Tune calls the driver's callbacks on its own event loop, so a tracking server that is down
must not block them: the trials would stall with it. Each write is a JSON-able record that
goes into a FIFO; one daemon thread applies them in order. A record that fails because the
server cannot be reached is retried (the same record, so the order holds) with exponential
backoff until it goes through. A record MLflow refuses for another reason is reported on
stderr and dropped, since retrying it cannot help and would hold back every later one.

At the end of a study :meth:`LogQueue.close` waits a while for the queue to drain; what is
still pending then is written to a JSON-lines spool file, which ``apc resume`` queues again
(:meth:`LogQueue.load_spool`) once the server is back. Nothing is lost in between:
Tune's own storage keeps every result too.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["LogQueue", "Record", "is_unreachable"]

#: ``{"op": name, ...arguments}``; the applier knows the ops.
Record = dict[str, Any]

_UNREACHABLE_MARKERS = (
    "max retries exceeded",
    "connection refused",
    "connection aborted",
    "connection reset",
    "failed to establish a new connection",
    "temporarily unavailable",
    "read timed out",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
    "database is locked",
)


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the store could not be reached (worth retrying), not refused."""
    import requests

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout | ConnectionError):
            return True
        if any(marker in str(seen).lower() for marker in _UNREACHABLE_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class LogQueue:
    """Applies records in order on a background thread; retries while the store is down.

    Args:
        apply: performs one record (raises on failure).
        spool: JSON-lines file that receives the records still pending at :meth:`close`.
        max_backoff_s: longest wait between two tries of a record that could not be applied.
    """

    def __init__(
        self, apply: Callable[[Record], None], *, spool: Path, max_backoff_s: float = 15.0
    ) -> None:
        self._apply = apply
        self.spool = spool
        self._max_backoff_s = max_backoff_s
        self._records: deque[Record] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self.outage_s = 0.0
        self.retries = 0
        self._thread = threading.Thread(target=self._work, name="apc-mlflow-log", daemon=True)
        self._thread.start()

    def put(self, record: Record) -> None:
        """Queue ``record`` (returns at once)."""
        with self._condition:
            self._records.append(record)
            self._condition.notify_all()

    @property
    def pending(self) -> int:
        """Records not applied yet (the one being tried included)."""
        with self._condition:
            return len(self._records)

    def _work(self) -> None:
        first = min(0.5, self._max_backoff_s)
        backoff = first
        while True:
            with self._condition:
                while not self._records and not self._closing:
                    self._condition.wait()
                if not self._records:
                    return
                record = self._records[0]
            try:
                self._apply(record)
            except Exception as error:
                if is_unreachable(error):
                    with self._condition:
                        self.retries += 1
                        if self._closing:
                            return  # close() spools what is left
                        self._condition.wait(backoff)
                    self.outage_s += backoff
                    backoff = min(backoff * 2, self._max_backoff_s)
                    continue
                print(
                    f"apc: MLflow refused {record.get('op')} ({error}); that record is dropped",
                    file=sys.stderr,
                )
            backoff = first
            with self._condition:
                self._records.popleft()
                self._condition.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every queued record to be applied; True if they were."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while self._records:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(min(left, 0.5))
        return True

    def close(self, timeout_s: float) -> int:
        """Drain for up to ``timeout_s``, stop the thread, spool what is left; returns its count."""
        self.flush(timeout_s)
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        # A record mid-flight finishes (or fails) within MLflow's own request timeout.
        self._thread.join(timeout=60.0)
        with self._condition:
            left = list(self._records)
            self._records.clear()
        if left:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            # Whatever an earlier spool still held was queued again first, so it is in `left`.
            with self.spool.open("w", encoding="utf-8") as file:
                for record in left:
                    file.write(json.dumps(record) + "\n")
        return len(left)

    @staticmethod
    def load_spool(spool: Path) -> list[Record]:
        """The records an earlier :meth:`close` left in ``spool`` (none if it does not exist)."""
        if not spool.is_file():
            return []
        return [json.loads(line) for line in spool.read_text("utf-8").splitlines() if line]
