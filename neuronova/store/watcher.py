"""The study watcher: a study is stable ``stable_seconds`` after its last instance arrived, or sooner, when
the transfers that brought it have ended.

Transfers: an entry point (the DIMSE listener per association, STOW-RS per request) reports
:meth:`StudyWatcher.transfer_started`, the studies it stored (:meth:`transfer_stored`) and
:meth:`transfer_ended` (association released, aborted or its connection closed; request answered). A study
whose transfers have all ended is stable ``end_grace_seconds`` later, unless another instance of it arrived
meanwhile or another transfer still carries it: a sender that sends a study over one association, or several
in a row, no longer waits ``stable_seconds`` of quiet. The quiet rule stays for entry points that report
nothing and for senders that open one association per instance.

Stability lives in the index (it survives a restart); a late instance re-opens the study (the index sets it
not stable again) and the next quiet period makes it stable with a new generation. Subscribers (the job
router) are called with (study_uid, generation); when they return, the generation is marked routed, so a
crash between the two re-delivers it at the next start instead of losing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from neuronova.store.index import Index

log = logging.getLogger(__name__)

StableCallback = Callable[[str, int], None]


def stored_in_transfer(on_stored: Callable[[Any], None] | None, transfers: Any, key: Hashable
                       ) -> Callable[[Any], None] | None:
    """``on_stored`` (a store result callback) that also tells ``transfers`` (a StudyWatcher) which study the
    transfer ``key`` stored into; ``on_stored`` itself when there is no watcher."""
    if transfers is None:
        return on_stored

    def stored(result: Any) -> None:
        transfers.transfer_stored(key, result.instance.study_uid)
        if on_stored is not None:
            on_stored(result)

    return stored


class StudyWatcher:
    def __init__(self, index: Index, *, stable_seconds: float, poll_seconds: float | None = None,
                 end_grace_seconds: float = 0.3) -> None:
        self.index = index
        self.stable_seconds = stable_seconds
        self.end_grace_seconds = end_grace_seconds
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(1.0, max(0.05, stable_seconds / 4))
        self._subscribers: list[StableCallback] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: open transfer -> the studies it stored so far
        self._open: dict[Hashable, set[str]] = {}
        #: study -> when its last transfer ended
        self._ended: dict[str, float] = {}
        #: set when a transfer ends, so the poll loop wakes up without waiting a full poll interval
        self._wake = threading.Event()

    # --- transfers (called by the entry points, from their threads) ---------------------------------------

    def transfer_started(self, key: Hashable) -> None:
        with self._lock:
            self._open.setdefault(key, set())

    def transfer_stored(self, key: Hashable, study_uid: str) -> None:
        with self._lock:
            self._open.setdefault(key, set()).add(study_uid)
            self._ended.pop(study_uid, None)

    def transfer_ended(self, key: Hashable, study_uids: Iterable[str] = ()) -> None:
        """The transfer ``key`` is over (whatever its outcome); ``study_uids`` adds studies it stored."""
        now = time.time()
        with self._lock:
            studies = self._open.pop(key, set()) | set(study_uids)
            for study_uid in studies:
                self._ended[study_uid] = now
        if studies:
            self._wake.set()

    def _complete_transfers(self, now: float) -> list[str]:
        """Studies whose transfers all ended at least the grace ago, with nothing stored since."""
        with self._lock:
            carried = set().union(*self._open.values()) if self._open else set()
            due = [(uid, ended) for uid, ended in self._ended.items()
                   if uid not in carried and now - ended >= self.end_grace_seconds]
            for uid, _ in due:
                del self._ended[uid]
        done = []
        for study_uid, ended in due:
            row = self.index.study(study_uid)
            if row is None or bool(row["stable"]):
                continue
            if float(row["last_received"]) > ended:
                continue  # an instance came by another route after the transfer: the quiet rule decides
            done.append(study_uid)
        return done

    def subscribe(self, callback: StableCallback) -> None:
        self._subscribers.append(callback)

    def check_once(self) -> list[tuple[str, int]]:
        """Mark quiet studies (and studies whose transfers ended) stable and deliver every owed generation;
        return what was delivered."""
        for study_uid in self._complete_transfers(time.time()):
            self.index.mark_study_stable(study_uid)
        self.index.mark_stable_studies(quiet_seconds=self.stable_seconds)
        delivered = []
        for study_uid, generation in self.index.studies_owing_routing():
            try:
                for callback in self._subscribers:
                    callback(study_uid, generation)
            except Exception:
                log.exception("a stable-study subscriber failed for %s; retrying next poll", study_uid)
                continue
            self.index.mark_routed(study_uid, generation)
            delivered.append((study_uid, generation))
        return delivered

    def make_stable_now(self, study_uid: str) -> int | None:
        """Explicit request: the study is stable now (its jobs are created at the next poll)."""
        return self.index.mark_study_stable(study_uid)

    def _run(self) -> None:
        while not self._stop.is_set():
            # a transfer that ended wakes the loop; the grace then passes in short steps
            woken = self._wake.wait(self.poll_seconds)
            if self._stop.is_set():
                break
            if woken:
                self._wake.clear()
                self._stop.wait(self.end_grace_seconds)
            try:
                self.check_once()
            except Exception:
                log.exception("study watcher poll failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="study-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
