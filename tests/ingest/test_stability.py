"""A study sent in three associations with short gaps becomes one stable study, once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.conftest import storescu
from tests.factory import make_series, write_series


def _study(node, study_uid: str) -> sqlite3.Row | None:
    db = sqlite3.connect(f"file:{node.data_dir / 'index.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
    finally:
        db.close()


def _wait_stable(node, study_uid: str, generation: int, timeout: float = 20) -> sqlite3.Row:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _study(node, study_uid)
        if row is not None and row["stable"] and row["stable_generation"] >= generation:
            return row
        time.sleep(0.1)
    raise AssertionError("study did not become stable")


def test_three_associations_make_one_stable_study(node_factory, tmp_path: Path) -> None:
    # the quiet rule alone: a grace after the end of each association longer than the quiet time
    # (tests/ingest/test_transfer_end.py covers completion by the end of the transfers)
    node = node_factory("--stable-seconds", "2", env={"NEURONOVA_END_GRACE_SECONDS": "5"})
    series = make_series(9)
    study_uid = series[0].StudyInstanceUID
    files = write_series(series, tmp_path / "s")
    for i in range(3):
        assert storescu(node.dimse_port, files[i * 3:(i + 1) * 3]).returncode == 0
        row = _study(node, study_uid)
        assert row["stable"] == 0, "stable before the study was quiet"
        time.sleep(0.8)  # a gap shorter than the stable time
    row = _wait_stable(node, study_uid, 1)
    assert row["stable_generation"] == 1
    assert row["stable_at"] - row["last_received"] >= 2.0

    # stability survives a restart; a late instance re-opens the study and it becomes stable again
    node.stop()
    node.start()
    assert _study(node, study_uid)["stable"] == 1
    late = write_series(make_series(1, study_uid=study_uid), tmp_path / "late")
    assert storescu(node.dimse_port, late).returncode == 0
    assert _study(node, study_uid)["stable"] == 0
    assert _wait_stable(node, study_uid, 2)["stable_generation"] == 2


def test_a_study_is_stable_a_grace_after_its_transfers_end(tmp_path: Path) -> None:
    """The watcher's transfer rule on a real index: not while a transfer carries the study, a grace after the
    last one ended, not when an instance came since; the quiet rule (60 s here) never fired."""
    from neuronova.store import InstanceStore
    from neuronova.store.watcher import StudyWatcher
    from tests.jobs.helpers import encode

    store = InstanceStore(tmp_path / "data")
    try:
        watcher = StudyWatcher(store.index, stable_seconds=60, end_grace_seconds=0.2)
        delivered: list[tuple[str, int]] = []
        watcher.subscribe(lambda study, generation: delivered.append((study, generation)))
        first = make_series(3)
        study_uid = first[0].StudyInstanceUID
        for key in ("assoc-1", "assoc-2"):
            watcher.transfer_started(key)
        for ds in first:
            store.put(encode(ds))
            watcher.transfer_stored("assoc-1", study_uid)
        watcher.transfer_stored("assoc-2", study_uid)
        watcher.transfer_ended("assoc-1")
        time.sleep(0.3)
        assert watcher.check_once() == []  # assoc-2 still carries the study
        watcher.transfer_ended("assoc-2")
        assert watcher.check_once() == []  # within the grace
        time.sleep(0.3)
        assert watcher.check_once() == [(study_uid, 1)] and delivered == [(study_uid, 1)]
        assert watcher.check_once() == []  # once

        # a late series over a new association re-opens the study; an instance stored after the transfer
        # ended (another route) leaves the decision to the quiet rule
        watcher.transfer_started("assoc-3")
        store.put(encode(make_series(1, study_uid=study_uid)[0]))
        watcher.transfer_ended("assoc-3", [study_uid])
        store.put(encode(make_series(1, study_uid=study_uid)[0]))
        time.sleep(0.3)
        assert watcher.check_once() == []
        assert store.index.study(study_uid)["stable"] == 0
    finally:
        store.close()
