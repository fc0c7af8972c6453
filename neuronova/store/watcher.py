"""The study watcher: a study is stable ``stable_seconds`` after its last instance arrived.

Stability lives in the index (it survives a restart); a late instance re-opens the study (the index sets it
not stable again) and the next quiet period makes it stable with a new generation. Subscribers (the job
router) are called with (study_uid, generation); when they return, the generation is marked routed, so a
crash between the two re-delivers it at the next start instead of losing it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from neuronova.store.index import Index

log = logging.getLogger(__name__)

StableCallback = Callable[[str, int], None]


class StudyWatcher:
    def __init__(self, index: Index, *, stable_seconds: float, poll_seconds: float | None = None) -> None:
        self.index = index
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(1.0, max(0.05, stable_seconds / 4))
        self._subscribers: list[StableCallback] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback: StableCallback) -> None:
        self._subscribers.append(callback)

    def check_once(self) -> list[tuple[str, int]]:
        """Mark quiet studies stable and deliver every owed generation; return what was delivered."""
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
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_once()
            except Exception:
                log.exception("study watcher poll failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="study-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
