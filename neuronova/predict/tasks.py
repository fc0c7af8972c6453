"""Asynchronous predict tasks: durable records in SQLite, run by a small in-process thread pool.

``<data_dir>/predict/tasks.sqlite3`` holds one row per task: ``pending -> running -> completed | failed``,
with progress, the result (JSON) or the error (code, message), and the subject of the token that created it
(other subjects get 404, as for a task that does not exist). A task's files live in
``<data_dir>/predict/<task_id>/`` (segmentation.py says what is there); the id is made here
(``TASK_<uuid4>``) and checked against its pattern before it names a directory.

The record is written only once the upload is complete and checked, so a pending task always has its input.
On start: tasks left ``running`` by a previous process are marked failed ("interrupted, resubmit"), since
their run died with it; ``pending`` ones are queued again; directories without a record (an upload cut
off before its task was created) are removed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuronova.errors import InvalidRequest, NeuroNovaError, NotFound, RateLimited

log = logging.getLogger(__name__)

TASK_ID = re.compile(r"TASK_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"
INTERRUPTED = "interrupted by a restart of the node before it finished; resubmit"
#: More waiting tasks than this and a new one is refused (429 with Retry-After) rather than queued.
MAX_QUEUED = 32
DEFAULT_ESTIMATE_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    params TEXT NOT NULL,
    result TEXT,
    error_code TEXT,
    error_message TEXT
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, created_at);
"""


def new_task_id() -> str:
    return f"TASK_{uuid.uuid4()}"


def check_task_id(task_id: str) -> str:
    if not TASK_ID.fullmatch(task_id):
        raise InvalidRequest("a task id is TASK_ followed by a UUID (as returned when the task was created)")
    return task_id


@dataclass
class TaskRecord:
    task_id: str
    kind: str
    owner: str
    status: str
    progress: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None


class TaskStore:
    """The task table; thread-safe (one connection, one lock: a handful of writes per task)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a created task survives a power cut
            self._conn.executescript(_SCHEMA)

    def create(self, *, task_id: str, kind: str, owner: str, params: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT INTO tasks (task_id, kind, owner, status, progress, created_at, updated_at, params) "
                "VALUES (?, ?, ?, ?, 0, ?, ?, ?)", (task_id, kind, owner, PENDING, now, now, json.dumps(params)))

    def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        values = dict(row)
        values["params"] = json.loads(values["params"])
        values["result"] = json.loads(values["result"]) if values["result"] else None
        return TaskRecord(**values)

    def update(self, task_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"])
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._conn.execute(f"UPDATE tasks SET {columns} WHERE task_id = ?", (*fields.values(), task_id))

    def ids(self, status: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT task_id FROM tasks WHERE status = ? ORDER BY created_at", (status,))
            return [r[0] for r in rows.fetchall()]

    def known(self, task_ids: list[str]) -> set[str]:
        with self._lock:
            found = set()
            for tid in task_ids:
                if self._conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (tid,)).fetchone():
                    found.add(tid)
            return found

    def mark_interrupted(self) -> int:
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "UPDATE tasks SET status = ?, error_code = ?, error_message = ?, finished_at = ?, updated_at = ? "
                "WHERE status = ?", (FAILED, "INTERNAL_SERVER_ERROR", INTERRUPTED, now, now, RUNNING))
            return cur.rowcount

    def recent_durations(self, kind: str, n: int = 10) -> list[float]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT finished_at - started_at FROM tasks WHERE kind = ? AND status = ? "
                "ORDER BY finished_at DESC LIMIT ?", (kind, COMPLETED, n)).fetchall()
        return [float(r[0]) for r in rows if r[0] is not None]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


#: A task kind's runner: (record, task directory, progress callback) -> result (JSON-ready).
Runner = Callable[[TaskRecord, Path, Callable[[int], None]], dict[str, Any]]


class TaskManager:
    """Creates, runs and answers for tasks of the kinds in ``runners``."""

    def __init__(self, root: Path, *, runners: dict[str, Runner], workers: int = 1) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = TaskStore(root / "tasks.sqlite3")
        self.runners = runners
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict-task")
        self._futures: set[Future[None]] = set()
        self._closed = False
        interrupted = self.store.mark_interrupted()
        if interrupted:
            log.warning("%d predict task(s) were interrupted by a restart and are marked failed", interrupted)
        self._remove_orphans()
        for task_id in self.store.ids(PENDING):
            self._queue(task_id)

    def _remove_orphans(self) -> None:
        dirs = [p for p in self.root.iterdir() if p.is_dir() and TASK_ID.fullmatch(p.name)]
        known = self.store.known([p.name for p in dirs])
        for path in dirs:
            if path.name not in known:
                shutil.rmtree(path, ignore_errors=True)

    def task_dir(self, task_id: str) -> Path:
        return self.root / check_task_id(task_id)

    def new_task(self) -> tuple[str, Path]:
        """A fresh id and its (empty) directory, before the upload is read; refused when the queue is full."""
        waiting = len(self.store.ids(PENDING))
        if waiting >= MAX_QUEUED:
            raise RateLimited(f"{waiting} tasks are waiting; try again later",
                              retry_after=max(1, int(self.estimate_seconds("mri_segmentation", 1))))
        task_id = new_task_id()
        path = self.task_dir(task_id)
        path.mkdir()
        return task_id, path

    def submit(self, *, task_id: str, kind: str, owner: str, params: dict[str, Any]) -> None:
        if kind not in self.runners:
            raise ValueError(f"no runner for task kind {kind!r}")
        self.store.create(task_id=task_id, kind=kind, owner=owner, params=params)
        self._queue(task_id)

    def _queue(self, task_id: str) -> None:
        future = self._pool.submit(self._execute, task_id)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    def get(self, task_id: str, *, owner: str) -> TaskRecord:
        """The task, or NotFound (404) when it does not exist or belongs to another subject."""
        record = self.store.get(check_task_id(task_id))
        if record is None or record.owner != owner:
            raise NotFound(f"no task {task_id}")
        return record

    def estimate_seconds(self, kind: str, queued: int | None = None) -> float:
        """Seconds until the last of ``queued`` tasks (default: those pending and running) is done: the mean
        of the last runs (DEFAULT_ESTIMATE_S before the first) times the queue."""
        durations = self.store.recent_durations(kind)
        each = sum(durations) / len(durations) if durations else DEFAULT_ESTIMATE_S
        if queued is None:
            queued = len(self.store.ids(PENDING)) + len(self.store.ids(RUNNING))
        return round(each * max(1, queued), 1)

    def _execute(self, task_id: str) -> None:
        record = self.store.get(task_id)
        if record is None or record.status != PENDING or self._closed:
            return
        started = time.time()
        self.store.update(task_id, status=RUNNING, progress=1, started_at=started)
        task_dir = self.root / task_id

        def progress(percent: int) -> None:
            self.store.update(task_id, progress=max(1, min(99, int(percent))))

        try:
            result = self.runners[record.kind](record, task_dir, progress)
        except NeuroNovaError as exc:
            log.info("task %s failed: %s", task_id, exc.code)
            self._finish(task_id, status=FAILED, error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            # The type and the stack, not the message: it may quote patient data (the full error goes to DEBUG).
            log.error("task %s failed unexpectedly: %s", task_id, type(exc).__name__)
            log.debug("task %s failure", task_id, exc_info=exc)
            self._finish(task_id, status=FAILED, error_code="INTERNAL_SERVER_ERROR",
                         error_message="internal error while running the task; the node's log has the details")
        else:
            self._finish(task_id, status=COMPLETED, progress=100, result=result)
            log.info("task %s completed in %.2f s", task_id, time.time() - started)
        finally:
            shutil.rmtree(task_dir / "input", ignore_errors=True)  # the results are what is kept

    def _finish(self, task_id: str, **fields: Any) -> None:
        self.store.update(task_id, finished_at=time.time(), **fields)

    def counts(self) -> dict[str, int]:
        return {status: len(self.store.ids(status)) for status in (PENDING, RUNNING)}

    def close(self, timeout: float = 10.0) -> None:
        """Drop the queued runs (they stay pending and run after the next start) and give a running one
        ``timeout`` seconds to finish; one still running then is marked failed at the next start."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        _, still_running = wait(list(self._futures), timeout=timeout)
        if still_running:
            log.warning("%d predict task(s) still running at shutdown", len(still_running))
            return  # the store stays open for them; the process is ending anyway
        self.store.close()
