"""The Huey side: the queue (SqliteHuey in the data directory, or RedisHuey), the ``run_job`` task, ``enqueue``.

The Huey instance is built from the settings at start-up, never at import time: :class:`JobQueue` creates it
and registers the one task on it. Messages carry only a job id; everything else is in the job table.

Messages are JSON, not Huey's default pickle: a worker unpickling what it reads from a shared Redis would
run code for anyone able to write to that Redis.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import SqliteStorage

from neuronova.config import Settings

log = logging.getLogger(__name__)

QUEUE_NAME = "neuronova"
TASK_NAME = "run_job"
#: RedisHuey blocks on BRPOP this long (seconds) before checking for a stop; it bounds shutdown time.
REDIS_READ_TIMEOUT = 0.5


class JsonSerializer(Serializer):
    """Huey messages as JSON. Only what ``run_job`` uses is supported (no result pipelines or chords)."""

    def _serialize(self, data: Any) -> bytes:
        if not isinstance(data, Message):
            raise TypeError(f"only task messages are serialised (results are off), found {type(data).__name__}")
        if data.on_complete is not None or data.on_error is not None or data.chord_config is not None:
            raise TypeError("task pipelines and chords are not supported by the JSON serializer")
        fields = data._asdict()
        for key in ("eta", "expires_resolved"):
            if isinstance(fields[key], dt.datetime):
                fields[key] = {"datetime": fields[key].isoformat()}
        if isinstance(fields["expires"], dt.datetime | dt.timedelta):
            raise TypeError("task expiry is not supported by the JSON serializer")
        fields["args"] = list(fields["args"] or ())
        return json.dumps(fields, separators=(",", ":")).encode()

    def _deserialize(self, data: bytes) -> Message:
        fields = json.loads(data)
        for key in ("eta", "expires_resolved"):
            if isinstance(fields.get(key), dict):
                fields[key] = dt.datetime.fromisoformat(fields[key]["datetime"])
        fields["args"] = tuple(fields.get("args") or ())
        return Message(**{k: v for k, v in fields.items() if k in Message._fields})


class _QueueStorage(SqliteStorage):
    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        # WAL with synchronous=NORMAL: no fsync per message (SQLite's default FULL caps the queue near 150
        # messages/s here), never a corrupt file; a message lost to a power cut is re-sent by the reconciler
        # from the job table, which is the durable record.
        conn.execute("pragma synchronous=NORMAL")
        return conn


class NodeSqliteHuey(SqliteHuey):
    storage_class = _QueueStorage


def make_huey(settings: Settings, *, name: str = QUEUE_NAME) -> Huey:
    """SqliteHuey in ``<data_dir>/queue.sqlite3`` when ``queue_url`` is unset, else RedisHuey (BRPOP, no polling)."""
    common: dict[str, Any] = {"results": False, "serializer": JsonSerializer()}
    if settings.queue_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return NodeSqliteHuey(name, filename=str(settings.data_dir / "queue.sqlite3"), **common)
    return RedisHuey(name, url=settings.queue_url, blocking=True, read_timeout=REDIS_READ_TIMEOUT, **common)


class JobQueue:
    """A Huey instance with ``run_job`` registered. ``run`` executes a job id in a consumer; an enqueue-only
    process (``serve --workers 0``) may leave it unset."""

    def __init__(self, huey: Huey, run: Callable[[str], Any] | None = None) -> None:
        self.huey = huey
        self.run: Callable[[str], Any] | None = run
        #: Called after each enqueue; the in-process consumer sets it to wake its workers at once.
        self.on_enqueue: Callable[[], None] | None = None

        @huey.task(name=TASK_NAME)
        def run_job(job_id: str) -> None:
            if self.run is None:
                raise RuntimeError("this process enqueues jobs but has no runner")
            self.run(job_id)

        self._task = run_job

    @classmethod
    def from_settings(cls, settings: Settings, run: Callable[[str], Any] | None = None) -> JobQueue:
        return cls(make_huey(settings), run)

    def enqueue(self, job_id: str, *, delay: float = 0.0) -> None:
        """Send the job's message (``delay`` seconds later: Huey's scheduler holds it until then)."""
        if delay > 0:
            self._task.schedule(args=(job_id,), delay=delay)
        else:
            self._task(job_id)
        if self.on_enqueue is not None:
            self.on_enqueue()

    def pending_job_ids(self) -> set[str]:
        """Job ids with a message in the queue or the schedule (what the reconciler must not re-send)."""
        out: set[str] = set()
        for task in [*self.huey.pending(), *self.huey.scheduled()]:
            if task.name == TASK_NAME and task.args:
                out.add(str(task.args[0]))
        return out

    def flush(self) -> None:
        """Drop every message (tests; an operator's 'the queue is corrupt' button)."""
        self.huey.storage.flush_queue()
        self.huey.storage.flush_schedule()
