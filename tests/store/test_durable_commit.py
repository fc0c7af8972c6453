"""The commit's durability rules: what is fsync'd before success, leftovers of a crash, concurrent duplicates."""

from __future__ import annotations

import errno
import io
import os
import threading
import time
from pathlib import Path

import pytest

from neuronova.errors import DuplicateConflict, OutOfResources
from neuronova.store import InstanceStore
from neuronova.store import instances as instances_module
from tests.factory import make_series


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(params=["sequential", "parallel"])
def fsync_mode(request, monkeypatch) -> str:
    """Both ways of fsyncing a new instance (the store picks by the disk's flush latency)."""
    monkeypatch.setattr(instances_module, "PARALLEL_FSYNC_ABOVE", -1.0 if request.param == "parallel" else 1e9)
    return request.param


def test_file_and_directories_are_fsynced_before_put_returns(tmp_path: Path, monkeypatch, fsync_mode) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(instances_module.os, "fsync", recording_fsync)
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    result = store.put(_encode(ds))
    assert result.outcome == "stored"
    # the file (wherever it was when fsync'd: it is renamed first), its series directory, and the parents of
    # the directories created for it
    assert str(result.path) in synced
    assert str(result.path.parent) in synced and str(result.path.parent.parent) in synced
    assert str(store.instances_dir) in synced
    assert store.index.instance(ds.SOPInstanceUID) is not None
    store.close()


def test_an_unindexed_file_at_the_final_path_is_replaced(tmp_path: Path) -> None:
    """A crash between rename and index leaves a file nobody acknowledged: the resend stores over it."""
    store = InstanceStore(tmp_path)
    first, second = make_series(2)
    for ds, leftover in ((first, b"partial garbage"), (second, _encode(second))):
        data = _encode(ds)
        final = store.instances_dir / store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                          ds.SOPInstanceUID)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(leftover)
        result = store.put(data)
        assert result.outcome == "stored"
        assert final.read_bytes() == data and store.index.instance(ds.SOPInstanceUID)["size"] == len(data)
    assert store.put(_encode(first)).outcome == "duplicate"
    assert list(store.tmp_dir.iterdir()) == []
    store.close()


@pytest.mark.parametrize("same_content", [True, False])
def test_concurrent_puts_of_one_uid_store_once(tmp_path: Path, same_content: bool, monkeypatch,
                                               fsync_mode) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # the first commit is still in flight when the second arrives
        threading.Event().wait(0.05)
        real_fsync(fd)

    monkeypatch.setattr(instances_module.os, "fsync", slow_fsync)
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    versions = [_encode(ds)]
    if not same_content:
        ds.PatientName = "Other^Name"
    versions.append(_encode(ds))
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def put(data: bytes) -> None:
        barrier.wait()
        try:
            outcomes.append((store.put(data).outcome, data))
        except DuplicateConflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=put, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [o for o in outcomes if isinstance(o, tuple) and o[0] == "stored"]
    assert len(stored) == 1
    other = next(o for o in outcomes if o is not stored[0])
    if same_content:
        assert isinstance(other, tuple) and other[0] == "duplicate"
    else:
        assert isinstance(other, DuplicateConflict)
    # what is on disk is what was reported stored
    assert store.path_of(ds.SOPInstanceUID).read_bytes() == stored[0][1]
    store.close()


def test_a_failed_fsync_keeps_nothing(tmp_path: Path, monkeypatch, fsync_mode) -> None:
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".dcm"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(instances_module.os, "fsync", failing_fsync)
    with pytest.raises(OutOfResources):
        store.put(_encode(ds))
    assert store.index.instance(ds.SOPInstanceUID) is None
    assert not list(store.instances_dir.rglob("*.dcm")) and list(store.tmp_dir.iterdir()) == []
    monkeypatch.setattr(instances_module.os, "fsync", real_fsync)
    assert store.put(_encode(ds)).outcome == "stored"
    store.close()


def test_directory_sync_is_shared_and_always_starts_after_the_call(tmp_path: Path, monkeypatch) -> None:
    """Group commit: concurrent callers share fsyncs, and each returns only after an fsync that began after
    it was called (so the entries it changed before calling are covered)."""
    fsyncs: list[tuple[float, float]] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        start = time.monotonic()
        threading.Event().wait(0.02)
        real_fsync(fd)
        fsyncs.append((start, time.monotonic()))

    monkeypatch.setattr(instances_module.os, "fsync", slow_fsync)
    dirsync = instances_module.DirectorySync()
    calls: list[tuple[float, float]] = []
    lock = threading.Lock()

    def call(delay: float) -> None:
        threading.Event().wait(delay)
        start = time.monotonic()
        dirsync.sync(tmp_path)
        with lock:
            calls.append((start, time.monotonic()))

    threads = [threading.Thread(target=call, args=(i * 0.004,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 12
    assert 1 <= len(fsyncs) < 12  # shared
    for called, returned in calls:
        assert any(called <= began and ended <= returned for began, ended in fsyncs)


def test_an_unindexed_file_locked_by_another_writer_is_waited_for(tmp_path: Path) -> None:
    """Another process (a worker sharing the data directory) is committing the same UID: its file is at the
    final path, locked, not yet indexed. The store waits for it instead of taking it for a crash's leftover."""
    import fcntl

    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    data = _encode(ds)
    final = store.instances_dir / store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    final.parent.mkdir(parents=True)
    final.write_bytes(data)
    other = os.open(final, os.O_RDONLY)  # the other writer's descriptor (its own open file: its own lock)
    fcntl.flock(other, fcntl.LOCK_EX)
    outcome: list[str] = []
    putter = threading.Thread(target=lambda: outcome.append(store.put(data).outcome))
    putter.start()
    putter.join(0.3)
    assert putter.is_alive() and outcome == []  # waiting for the other writer
    scanned = instances_module.scan_part10(io.BytesIO(data), len(data))
    store.index.add_instance(scanned.attrs, transfer_syntax=scanned.transfer_syntax,
                             path=str(final.relative_to(store.instances_dir)), size=len(data))
    os.close(other)  # the other writer is done: indexed, lock released
    putter.join(10)
    assert outcome == ["duplicate"]
    store.close()
