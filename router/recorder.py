"""Write paired outputs in batches from a background thread; spool them to disk while storage is down.

The request path only appends a finished Exchange to an in-memory deque (never waits on the
database). A background thread turns exchanges into PairRecords (one per request row) and writes
them with `store.pairs.insert_many` every recorder_flush_interval or recorder_batch rows.

Nothing is lost:
- when storage fails (any StorageError, e.g. Unavailable) the batch is appended to this process's
  spool file (JSON lines) in spool_dir, and the database is tried again every spool_retry_interval;
- when more than recorder_queue_size records wait in memory, the newest go straight to the spool;
- spool files are replayed when the database answers again; a file is claimed by an atomic rename
  (`pairs-*.jsonl` → `claimed-PID-*.jsonl`) so two processes never replay the same file, and the
  insert is idempotent per (deployment, request_id, row_index), so a replay interrupted midway is safe
  to repeat;
- at start, files left by processes that are no longer alive (spooled or half-replayed) are replayed;
- close() writes everything still queued (or spools it) before returning.

One bad row never holds back the others: when storage refuses a value itself (DataRefused: too
long for its column, a NUL character PostgreSQL cannot hold, text that is not UTF-8), the batch is
split in halves until every good row is stored and each refused row is isolated; those go to this
process's quarantine file (`quarantine-PID-*.jsonl` in spool_dir, one JSON line {"reason",
"record"} each) and are never retried. Any other storage error spools the batch as before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from router.exchange import Exchange
from storage import DataRefused, StorageError, Store
from storage.entities import PairRecord

log = logging.getLogger(__name__)

FIELDS = tuple(f.name for f in fields(PairRecord))
_OWNED = re.compile(r"^(?:pairs|claimed)-(\d+)-")


class Recorder:
    """Collect exchanges and store their PairRecords in batches, spooling when storage is down."""

    def __init__(
        self,
        store: Store,
        *,
        spool_dir: str | Path,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        queue_size: int = 50_000,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.retry_interval = retry_interval
        self.clock = clock
        self.written = 0
        self.spooled = 0
        self.replayed = 0
        self.quarantined = 0
        self.lag_s = 0.0
        self._queue: deque[Exchange] = deque()
        self._pending_rows = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._io = threading.Lock()  # one writer at a time: the thread, close() or an overflowing request
        self._spool_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._token = uuid.uuid4().hex[:8]
        self._seq = 0
        self._spool_file: Path | None = None
        self._spool_rows = 0
        self._down_until = 0.0
        self._thread: threading.Thread | None = None

    # -- the request path ---------------------------------------------------------------------------

    def add(self, exchange: Exchange) -> None:
        """Queue an answered request's records; never blocks on storage."""
        if self._pending_rows >= self.queue_size:
            self._spool(exchange.to_records())  # memory is bounded: overflow goes to disk
            return
        with self._count_lock:
            self._queue.append(exchange)
            self._pending_rows += exchange.rows
        if self._pending_rows >= self.batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Rows waiting in memory."""
        return self._pending_rows

    @property
    def spool_rows(self) -> int:
        """Rows this process has in its spool and not yet replayed."""
        return self._spool_rows

    # -- the background thread ----------------------------------------------------------------------

    def start(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="mlcanary-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._replay(dead_only=True)
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
                if self._spool_rows and self.clock() >= self._down_until:
                    self._replay(dead_only=False)
            except Exception:  # the recorder must outlive any surprise; records stay queued or spooled
                log.exception("recorder cycle failed")

    def flush(self) -> int:
        """Write every queued record now (to storage, or to the spool if storage fails); return rows."""
        total = 0
        with self._io:
            while self._queue:
                batch: list[PairRecord] = []
                oldest = self._queue[0].received_at
                taken: list[Exchange] = []
                with self._count_lock:
                    while self._queue and len(taken) < self.batch_size:
                        exchange = self._queue.popleft()
                        self._pending_rows -= exchange.rows
                        taken.append(exchange)
                for exchange in taken:
                    batch.extend(exchange.to_records())
                self._write(batch)
                self.lag_s = max(0.0, (datetime.now(oldest.tzinfo) - oldest).total_seconds())
                total += len(batch)
        return total

    def _write(self, batch: list[PairRecord]) -> None:
        if self.clock() < self._down_until:
            self._spool(batch)
            return
        try:
            self.written += self._store(batch)
        except StorageError as exc:
            log.warning("storage refused %d paired rows, spooling them: %s", len(batch), exc)
            self._down_until = self.clock() + self.retry_interval
            self._spool(batch)

    def _store(self, batch: list[PairRecord]) -> int:
        """Insert a batch, isolating and quarantining rows storage refuses; return the rows stored.

        Raises any other StorageError (the batch is then spooled and retried later).
        """
        try:
            self.store.pairs.insert_many(batch)
        except DataRefused as exc:
            refused = self._isolate(batch, exc)
            for record, reason in refused:
                self._quarantine(record, reason)
            return len(batch) - len(refused)
        return len(batch)

    def _isolate(self, batch: list[PairRecord], error: BaseException) -> list[tuple[PairRecord, str]]:
        """Store what can be stored of a refused batch by halves; return the refused rows and why."""
        if len(batch) == 1:
            return [(batch[0], str(error)[:500])]
        refused: list[tuple[PairRecord, str]] = []
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            try:
                self.store.pairs.insert_many(half)
            except DataRefused as exc:
                refused.extend(self._isolate(half, exc))
        return refused

    def _quarantine(self, record: PairRecord, reason: str) -> None:
        """Keep a row storage refuses, with the reason, in a file that is never replayed."""
        log.error(
            "storage refused paired row %r (row %d): %s; kept in the quarantine file, not retried",
            record.request_id[:64], record.row_index, reason,
        )  # fmt: skip
        line = json.dumps({"reason": reason, "record": _to_json(record)}, default=_json_default) + "\n"
        path = self.spool_dir / f"quarantine-{os.getpid()}-{self._token}.jsonl"
        with self._spool_lock:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write(line)
            self.quarantined += 1

    # -- the spool ----------------------------------------------------------------------------------

    def _spool(self, records: list[PairRecord]) -> None:
        if not records:
            return
        lines = "".join(json.dumps(_to_json(r), default=_json_default) + "\n" for r in records)
        with self._spool_lock:
            if self._spool_file is None:
                self._seq += 1
                self._spool_file = self.spool_dir / f"pairs-{os.getpid()}-{self._token}-{self._seq:06d}.jsonl"
                self.spool_dir.mkdir(parents=True, exist_ok=True)
            with open(self._spool_file, "a", encoding="utf-8") as handle:
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())
            self._spool_rows += len(records)
            self.spooled += len(records)

    def _replay(self, *, dead_only: bool) -> None:
        """Claim and store spool files: this process's own (unless dead_only) and dead processes'."""
        if not dead_only:
            with self._spool_lock:
                self._spool_file = None  # later spooling starts a new file; the old one is claimable
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            if not self._claimable(path.name, dead_only=dead_only):
                continue
            claimed = path.with_name(
                f"claimed-{os.getpid()}-{self._token}-{uuid.uuid4().hex[:6]}-{path.name}"
            )
            try:
                os.rename(path, claimed)  # atomic: of two processes, one wins and the other gets ENOENT
            except FileNotFoundError:
                continue
            if not self._replay_file(
                claimed, own=path.name.startswith(f"pairs-{os.getpid()}-{self._token}-")
            ):
                return

    def _claimable(self, name: str, *, dead_only: bool) -> bool:
        mine = f"pairs-{os.getpid()}-{self._token}-"
        if name.startswith(mine):
            return not dead_only
        match = _OWNED.match(name)
        if match is None:
            return False
        pid = int(match.group(1))
        return pid != os.getpid() and not _alive(pid)

    def _replay_file(self, path: Path, *, own: bool) -> bool:
        stored = 0
        try:
            for chunk in _read_chunks(path, self.batch_size):
                self._store(chunk)
                stored += len(chunk)  # stored, or quarantined: out of the spool either way
        except StorageError as exc:
            log.warning("replaying %s failed after %d rows; will retry: %s", path.name, stored, exc)
            self._down_until = self.clock() + self.retry_interval
            with self._spool_lock:
                self._seq += 1
                back = self.spool_dir / f"pairs-{os.getpid()}-{self._token}-{self._seq:06d}r.jsonl"
            os.rename(path, back)  # ours now, replayed again later (idempotently)
            return False
        path.unlink()
        self.replayed += stored
        if own:
            with self._spool_lock:
                self._spool_rows = max(0, self._spool_rows - stored)
        log.info("replayed %d spooled paired rows from %s", stored, path.name)
        return True

    # -- shutdown -----------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and write (or spool) everything still queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_json(record: PairRecord) -> dict[str, Any]:
    data = {name: getattr(record, name) for name in FIELDS}
    data["received_at"] = record.received_at.isoformat()
    return data


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _read_chunks(path: Path, size: int) -> Iterator[list[PairRecord]]:
    chunk: list[PairRecord] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                data["received_at"] = datetime.fromisoformat(data["received_at"])
                chunk.append(PairRecord(**data))
            except (ValueError, TypeError, KeyError) as exc:  # a line cut short by a crash
                log.error("skipping unreadable line %d of %s: %s", number, path.name, exc)
                continue
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
