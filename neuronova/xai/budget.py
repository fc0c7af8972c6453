"""Time budgets and per-model locks for explainers.

An explanation is optional: a pipeline that cannot explain within its budget returns the prediction
without one. :func:`run_with_budget` enforces the budget with a worker thread and a timeout, because a
PyTorch forward or a SHAP call cannot be interrupted from outside in Python. When the budget runs out the
caller gets :class:`~neuronova.errors.XAIGenerationError` at once, and the abandoned worker thread keeps
running until its next checkpoint: explainers call :func:`checkpoint` between their phases (after the
forward pass, before the upsampling, ...), which raises in a cancelled worker so that it releases the model
lock and its memory early. A phase already under way (one forward, one backward) runs to its end. The
worker is a daemon thread, so an abandoned explainer never holds up interpreter exit.

Grad-CAM registers hooks on a module, so explanations that share a model are serialised by a lock per
model (:func:`model_lock`). Waiting for that lock counts against the budget.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from neuronova.errors import XAIGenerationError

log = logging.getLogger(__name__)

T = TypeVar("T")

_state = threading.local()  # per worker thread: .cancel (threading.Event), .deadline (monotonic seconds)
_locks: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def run_with_budget(fn: Callable[[], T], seconds: float | None, *, what: str = "explanation") -> T:
    """Run ``fn()`` and return its result, or raise XAIGenerationError.

    Raises XAIGenerationError when ``fn`` takes longer than ``seconds`` (``None`` means no limit, and
    ``fn`` then runs in the calling thread) or when it raises anything; the original exception is chained.
    """
    if seconds is None:
        return _call(fn, what)
    if seconds <= 0:
        raise ValueError(f"a time budget is a positive number of seconds, got {seconds!r}")

    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def worker() -> None:
        _state.cancel = cancel
        _state.deadline = time.monotonic() + seconds
        try:
            outcome["value"] = _call(fn, what)
        except BaseException as exc:  # handed to the caller, never lost in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=worker, name=f"xai-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        cancel.set()
        log.warning("%s exceeded its time budget of %.3g s; returning without it", what, seconds)
        raise XAIGenerationError(f"{what} exceeded its time budget of {seconds:.3g} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]  # always an XAIGenerationError, see _call
    return outcome["value"]  # type: ignore[return-value]


def _call(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except XAIGenerationError:
        raise
    except Exception as exc:
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        raise XAIGenerationError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def checkpoint() -> None:
    """Raise XAIGenerationError in a worker whose budget has run out; a no-op elsewhere."""
    cancel: threading.Event | None = getattr(_state, "cancel", None)
    if cancel is not None and cancel.is_set():
        raise XAIGenerationError("explanation cancelled: its time budget ran out")


def remaining_seconds() -> float | None:
    """Seconds left in this worker's budget; ``None`` outside :func:`run_with_budget`."""
    deadline: float | None = getattr(_state, "deadline", None)
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@contextmanager
def model_lock(model: object) -> Iterator[None]:
    """Hold the lock of ``model`` (one per object, created on first use, freed with the object).

    Inside a budget the wait is bounded by what is left of it.
    """
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.Lock()
    left = remaining_seconds()
    if not lock.acquire(timeout=-1 if left is None else left):
        raise XAIGenerationError("explanation ran out of time waiting for another explanation of the same model")
    try:
        checkpoint()
        yield
    finally:
        lock.release()
