"""An ordered queue of MLflow writes, applied by a background thread that outlives outages.

Tune calls the driver's callbacks on its own event loop, so a tracking server that is down
must not block them: the trials would stall with it. Each write is a JSON-able record that
goes into a FIFO; one daemon thread applies them in order. A record that fails because the
server cannot be reached is retried (the same record, so the order holds) with exponential
backoff until it goes through. A record MLflow refuses for another reason (an invalid value,
a run in the wrong state) is quarantined: appended with its reason to a JSON-lines file next
to the spool (:attr:`LogQueue.quarantine`), with one warning per queue, since retrying it
cannot help and would hold back every later one.

At the end of a study :meth:`LogQueue.close` waits a while for the queue to drain; what is
still pending then is written to a JSON-lines spool file (a temporary file, synced, then
renamed over the spool: a kill leaves the old spool or the new one, never half of one), which
``apc resume`` queues again (:meth:`LogQueue.load_spool`) once the server is back. Nothing is
lost in between: Tune's own storage keeps every result too. :func:`read_json_lines` reads
such files, and Tune's ``result.json``, skipping a line a killed writer left torn.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["JsonLines", "LogQueue", "Record", "is_unreachable", "read_json_lines"]

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class JsonLines:
    """What :func:`read_json_lines` read: the objects, and the line numbers (from 1) of the
    lines it skipped because they hold no JSON object (a write cut short)."""

    records: list[dict[str, Any]]
    torn: list[int] = field(default_factory=list)


def read_json_lines(text: str, *, source: str) -> JsonLines:
    """The JSON objects of ``text``, one a line; a line that is no JSON object is skipped.

    A writer killed mid-line (a driver's spool of old, Tune's ``result.json`` on a node that
    died) leaves its last line torn; what came before it is whole and still counts, so such a
    line costs one warning naming ``source`` and how many lines were skipped, not the rest.
    """
    records: list[dict[str, Any]] = []
    torn: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            torn.append(number)
            continue
        if isinstance(value, dict):
            records.append(value)
        else:  # a prefix of a line can still parse, as a bare number say
            torn.append(number)
    if torn:
        logger.warning(
            "apc: skipped %d torn line(s) of %s (line %s: not a whole JSON object, e.g. a write "
            "cut short by a kill); the other %d line(s) are read",
            len(torn),
            source,
            ", ".join(map(str, torn)),
            len(records),
        )
    return JsonLines(records, torn)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a kill at any point leaves the old file or the new
    one whole: a temporary file in the same folder (the rename must not cross filesystems),
    synced before it is renamed over ``path``, and the folder synced after the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    # Without it a crash right after the rename may bring back the old name on some filesystems.
    with contextlib.suppress(OSError):  # e.g. a filesystem that cannot open folders
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class LogQueue:
    """Applies records in order on a background thread; retries while the store is down.

    Args:
        apply: performs one record (raises on failure).
        spool: JSON-lines file that receives the records still pending at :meth:`close`.
        quarantine: JSON-lines file that receives each record ``apply`` refused, with its
            reason (default: ``<spool stem>.quarantine.jsonl`` next to ``spool``).
        max_backoff_s: longest wait between two tries of a record that could not be applied.
    """

    def __init__(
        self,
        apply: Callable[[Record], None],
        *,
        spool: Path,
        quarantine: Path | None = None,
        max_backoff_s: float = 15.0,
    ) -> None:
        self._apply = apply
        self.spool = spool
        self.quarantine = (
            quarantine
            if quarantine is not None
            else spool.with_name(f"{spool.stem}.quarantine.jsonl")
        )
        self._max_backoff_s = max_backoff_s
        self._records: deque[Record] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self.outage_s = 0.0
        self.retries = 0
        #: Records refused and written to :attr:`quarantine` by this queue.
        self.quarantined = 0
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
                self._quarantine(record, error)
            backoff = first
            with self._condition:
                self._records.popleft()
                self._condition.notify_all()

    def _quarantine(self, record: Record, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}".strip()
        entry = {
            "reason": reason,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "record": record,
        }
        try:
            self.quarantine.parent.mkdir(parents=True, exist_ok=True)
            with self.quarantine.open("a", encoding="utf-8") as file:
                # default=str: a record that JSON cannot hold is itself a likely reason.
                file.write(json.dumps(entry, default=str) + "\n")
                file.flush()
                os.fsync(file.fileno())
            kept = f"kept with its reason in {self.quarantine}"
        except OSError as write_error:
            kept = f"and could not be kept in {self.quarantine} ({write_error})"
        self.quarantined += 1
        if self.quarantined == 1:
            logger.warning(
                "apc: MLflow refused a %s record (%s); it is %s, and so is every further "
                "record it refuses (the records after each go on)",
                record.get("op"),
                reason,
                kept,
            )

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
            # Whatever an earlier spool still held was queued again first, so it is in `left`;
            # written in place, a kill halfway would lose it as well as the new records.
            _write_atomically(self.spool, "".join(json.dumps(r) + "\n" for r in left))
        return len(left)

    @staticmethod
    def load_spool(spool: Path) -> list[Record]:
        """The records an earlier :meth:`close` left in ``spool`` (none if it does not exist);
        a torn line (a spool written before spools were atomic) is skipped with a warning."""
        if not spool.is_file():
            return []
        return read_json_lines(spool.read_text("utf-8"), source=str(spool)).records
