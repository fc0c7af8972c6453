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
    node = node_factory("--stable-seconds", "2")
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
