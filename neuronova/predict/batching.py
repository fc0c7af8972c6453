"""Micro-batching: concurrent requests for one model share one forward pass on the device.

A request first takes a :meth:`MicroBatcher.slot` when it arrives (before its upload is read and decoded),
then submits its preprocessed input through the slot. One worker thread per model runs the batches: it
takes the first waiting item and, while other slots are still open (requests on their way), waits up to
``wait_ms`` for them, at most ``max_batch_size`` items. So a lone request never waits (nothing else is
announced), while eight concurrent ones are gathered into one batch. Each item gets its own result, the
same as if it had been run alone (a network's batch items do not interact in eval mode; tests compare).

``max_batch_size=1`` turns batching off: each request runs its own forward in its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741  # item
R = TypeVar("R")  # result


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0}


class Slot(Generic[I, R]):
    """One announced request; submit its item once, or leave the ``with`` block without submitting."""

    def __init__(self, batcher: MicroBatcher[I, R]) -> None:
        self._batcher = batcher
        self._open = True

    def submit(self, item: I) -> Future[R]:
        if not self._open:
            raise RuntimeError("this slot was already used")
        self._open = False
        return self._batcher._submit(item, announced=True)

    def _release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._withdraw()


@dataclass
class _Pending(Generic[I, R]):
    item: I
    future: Future[R]
    queued_at: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[I, R]):
    """Runs ``fn(items) -> results`` (one result per item, in order) over gathered batches.

    ``fn`` raising fails every item of that batch with the exception.
    """

    def __init__(self, fn: Callable[[Sequence[I]], Sequence[R]], *, max_batch_size: int, wait_ms: float,
                 name: str = "batcher") -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must not be negative, got {wait_ms}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000.0
        self.name = name
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()  # with batching off, batches run in many threads
        self._cond = threading.Condition()
        self._pending: list[_Pending[I, R]] = []
        self._announced = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    @contextmanager
    def slot(self) -> Iterator[Slot[I, R]]:
        """Announce a request that will submit an item soon (it makes a forming batch wait for it)."""
        slot: Slot[I, R] = Slot(self)
        if self.enabled:
            with self._cond:
                self._announced += 1
        else:
            slot._open = True
        try:
            yield slot
        finally:
            slot._release()

    def submit(self, item: I) -> Future[R]:
        """Submit without a slot (the batch does not wait for anyone)."""
        return self._submit(item, announced=False)

    def run(self, item: I) -> R:
        """Submit and wait (for callers already in a worker thread)."""
        return self.submit(item).result()

    def _submit(self, item: I, *, announced: bool) -> Future[R]:
        future: Future[R] = Future()
        if not self.enabled:
            self._run_batch([_Pending(item, future)])
            return future
        with self._cond:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            if announced:
                self._announced -= 1
            self._pending.append(_Pending(item, future))
            self._cond.notify_all()
        return future

    def _withdraw(self) -> None:
        if self.enabled:
            with self._cond:
                self._announced -= 1
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                deadline = time.monotonic() + self.wait_s
                # Wait only for requests that are on their way (announced, not yet submitted).
                while len(self._pending) < self.max_batch_size and self._announced > 0 and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._pending[: self.max_batch_size]
                del self._pending[: self.max_batch_size]
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Pending[I, R]]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
        try:
            results = self.fn([p.item for p in live])
            if len(results) != len(live):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(live)} items")
        except BaseException as exc:  # handed to each waiting request
            for p in live:
                p.future.set_exception(exc)
            return
        for p, result in zip(live, results, strict=True):
            p.future.set_result(result)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
