import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from neuronova.errors import DuplicateConflict, InvalidDicom, StudyMismatch
from neuronova.store import InstanceStore
from tests.factory import make_series


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_stored_instance_is_on_disk_and_indexed(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    result = store.put(data)
    assert result.outcome == "stored"
    assert result.path.read_bytes() == data
    assert result.path.is_relative_to(tmp_path / "instances")
    row = store.index.instance(result.instance.sop_instance_uid)
    assert row is not None and row["size"] == len(data)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_identical_duplicate_is_a_noop_and_different_content_is_refused(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    first = _encode(ds)
    assert store.put(first).outcome == "stored"
    assert store.put(first).outcome == "duplicate"
    ds.PatientName = "Other^Name"
    with pytest.raises(DuplicateConflict):
        store.put(_encode(ds))
    # the stored instance is unchanged
    assert store.path_of(ds.SOPInstanceUID).read_bytes() == first
    assert store.put(_encode(ds), replace=True).outcome == "replaced"
    assert pydicom.dcmread(store.path_of(ds.SOPInstanceUID)).PatientName == "Other^Name"


def test_bad_input_changes_nothing_stored(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    good = _encode(ds)
    store.put(good)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "instances").rglob("*"))
    for bad in (good[:-10], b"not dicom", good[: len(good) // 2]):
        with pytest.raises(InvalidDicom):
            store.put(bad)
    with pytest.raises(StudyMismatch):
        store.put(_encode(make_series(1)[0]), expected_study_uid=ds.StudyInstanceUID)
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "instances").rglob("*"))
    assert before == after
    assert store.path_of(ds.SOPInstanceUID).read_bytes() == good
    assert list((tmp_path / "tmp").iterdir()) == []


def test_studies_become_stable_and_reopen(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    series = make_series(3)
    for ds in series:
        store.put(_encode(ds))
    index = store.index
    study = series[0].StudyInstanceUID
    assert index.mark_stable_studies(quiet_seconds=60) == []
    assert index.mark_stable_studies(quiet_seconds=0) == [(study, 1)]
    assert index.study(study)["stable"] == 1
    late = make_series(1, study_uid=study)[0]
    store.put(_encode(late))
    assert index.study(study)["stable"] == 0
    assert index.mark_stable_studies(quiet_seconds=0) == [(study, 2)]
    store.close()
    reopened = InstanceStore(tmp_path)
    assert reopened.index.study(study)["stable_generation"] == 2
    assert reopened.index.studies_owing_routing() == [(study, 2)]


def test_out_of_space_is_out_of_resources(tmp_path: Path) -> None:
    """A real full disk: a 1 MB tmpfs (needs root to mount; skipped otherwise)."""
    import os
    import subprocess

    from neuronova.errors import OutOfResources

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        store = InstanceStore(mnt)
        stored = []
        with pytest.raises(OutOfResources):
            for ds in make_series(200):
                data = _encode(ds)
                store.put(data)
                stored.append((ds.SOPInstanceUID, data))
        assert stored, "some instances fit before the disk filled"
        for uid, data in stored:
            assert store.path_of(uid).read_bytes() == data
        assert list((mnt / "tmp").iterdir()) == []
        store.close()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_opening_a_store_keeps_temporary_files_of_live_processes(tmp_path: Path) -> None:
    """``neuronova worker`` shares the data directory: its in-flight files must survive another process's start."""
    import subprocess

    from neuronova.store.instances import _HOST

    InstanceStore(tmp_path).close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        live_file = tmp_path / "tmp" / f"{_HOST}-{live.pid}-a.part"
        dead_file = tmp_path / "tmp" / f"{_HOST}-{dead.pid}-b.part"
        live_file.write_bytes(b"x")
        dead_file.write_bytes(b"x")
        InstanceStore(tmp_path).close()
        assert live_file.exists() and not dead_file.exists()
    finally:
        live.kill()
        live.wait()
