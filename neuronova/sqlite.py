"""One way to open the node's SQLite files: the instance index, the job table and the outbox.

A :class:`Database` is one file in WAL mode with

- one write connection behind a lock (``write()`` for single statements, ``transaction()`` for
  ``BEGIN IMMEDIATE ... COMMIT``): SQLite has one writer at a time anyway, and the lock keeps this process's
  threads from waiting on SQLite's busy handler;
- a small pool of read connections (``query()``): in WAL mode a reader sees every transaction committed
  before its statement began and never waits for the writer, so a reader is not stuck behind a commit's
  fsync (with ``synchronous=FULL`` that fsync is most of a commit). Without the pool the ingest path's
  look-ups (is this UID stored? does its identity agree?) queued behind every commit: 4 associations were
  slower than 1.

Why by hand: the standard library's sqlite3 has no pool, and SQLAlchemy's would bring an ORM layer for three
small tables whose statements are written out anyway.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

Synchronous = Literal["NORMAL", "FULL"]
#: Read connections kept open when idle (more are opened under load and closed when returned).
IDLE_READERS = 8
BUSY_TIMEOUT_SECONDS = 30.0


class Database:
    def __init__(self, path: Path, *, synchronous: Synchronous, schema: str = "",
                 functions: Mapping[str, tuple[int, Callable[..., Any]]] | None = None) -> None:
        """Open (and create) ``path``; ``schema`` is run once (idempotent DDL); ``functions`` (name -> (number
        of arguments, callable)) are registered on every connection."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self._functions = dict(functions or {})
        self._lock = threading.RLock()
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        if schema:
            self._db.executescript(schema)
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                               timeout=BUSY_TIMEOUT_SECONDS)
        conn.row_factory = sqlite3.Row
        for name, (n_args, fn) in self._functions.items():
            conn.create_function(name, n_args, fn, deterministic=True)
        return conn

    # --- writes -----------------------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The write connection, for statements that commit on their own (autocommit)."""
        with self._lock:
            yield self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` on the write connection; committed on exit, rolled back on an exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        """One statement on the write connection (``UPDATE ... RETURNING``, ``INSERT``); its rows."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- reads ------------------------------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection from the pool (several statements that need not be one snapshot)."""
        with self._pool_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the database is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
        try:
            yield conn
        finally:
            with self._pool_lock:
                keep = not self._closed and len(self._idle) < IDLE_READERS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        """A read on a pooled connection: it never waits for this process's writer."""
        with self.reader() as conn:
            return conn.execute(sql, params).fetchall()

    def columns(self, table: str) -> set[str]:
        with self._lock:
            return {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._lock:
            self._db.close()
