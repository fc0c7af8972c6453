"""The checks at the door, identity rules and duplicate comparison, at the store (no network)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file

from neuronova.errors import DuplicateConflict, IdentityConflict, NeuroNovaError
from neuronova.store import InstanceStore, scan_part10
from neuronova.store.checks import check_instance, text_warnings
from tests.factory import make_series
from tests.ingest.corpus import STANDALONE, Case, against, encode


def _snapshot(store: InstanceStore) -> tuple[dict[str, bytes], list[tuple]]:
    files = {str(p.relative_to(store.root)): p.read_bytes() for p in store.instances_dir.rglob("*.dcm")}
    rows = [tuple(r) for r in store.index.query("SELECT sop_uid, series_uid, study_uid, path, size FROM instances "
                                                "ORDER BY sop_uid")]
    return files, rows


def _outcome(store: InstanceStore, case: Case) -> int:
    try:
        result = store.put(case.build())
    except NeuroNovaError as exc:
        return exc.dicom_status
    return 0xB007 if result.warnings else 0x0000


@pytest.mark.parametrize("case", STANDALONE, ids=lambda c: c.name)
def test_standalone_cases(tmp_path: Path, case: Case) -> None:
    store = InstanceStore(tmp_path)
    store.put(encode(make_series(1)[0]))
    before = _snapshot(store)
    assert _outcome(store, case) == case.status
    after = _snapshot(store)
    if case.refused:
        assert after == before
    else:
        assert len(after[0]) == len(before[0]) + 1
    assert list(store.tmp_dir.iterdir()) == []
    store.close()


def test_cases_against_a_stored_instance(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    stored = make_series(1)[0]
    first = encode(stored)
    store.put(first)
    for case in against(stored):
        before = _snapshot(store)
        assert _outcome(store, case) == case.status, case.name
        if case.refused or case.name.startswith("same data set"):
            assert _snapshot(store) == before, case.name
    assert store.path_of(stored.SOPInstanceUID).read_bytes() == first
    store.close()


def test_issuer_conflicts_only_when_both_are_present(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    a, b, c = make_series(3)
    a.IssuerOfPatientID, c.IssuerOfPatientID = "HOSP-A", "HOSP-B"
    store.put(encode(a))
    assert store.put(encode(b)).outcome == "stored"  # no issuer: not a contradiction
    with pytest.raises(IdentityConflict):
        store.put(encode(c))
    store.close()


def test_identity_policy_accept_stores_conflicts(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, identity_policy="accept")
    a, b = make_series(2)
    b.PatientID = "SOMEONE-ELSE"
    store.put(encode(a))
    assert store.put(encode(b)).outcome == "stored"
    store.close()


def test_replace_moves_an_instance_to_its_new_series_and_leaves_no_orphan(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, duplicate_policy="replace")
    ds, sibling = make_series(2)
    store.put(encode(ds))
    store.put(encode(sibling))
    old_path = store.path_of(ds.SOPInstanceUID)
    other_series = make_series(1)[0]
    ds.SeriesInstanceUID, ds.StudyInstanceUID = other_series.SeriesInstanceUID, other_series.StudyInstanceUID
    result = store.put(encode(ds))
    assert result.outcome == "replaced"
    assert not old_path.exists()
    assert store.path_of(ds.SOPInstanceUID) == result.path and result.path.exists()
    row = store.index.instance(ds.SOPInstanceUID)
    assert (row["series_uid"], row["study_uid"]) == (ds.SeriesInstanceUID, ds.StudyInstanceUID)
    assert sorted(p.name for p in store.instances_dir.rglob("*.dcm")) == sorted(
        [f"{ds.SOPInstanceUID}.dcm", f"{sibling.SOPInstanceUID}.dcm"])
    store.close()


def test_reject_refuses_an_existing_uid_in_another_series(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    ds = make_series(1)[0]
    first = encode(ds)
    store.put(first)
    ds.SeriesInstanceUID = make_series(1)[0].SeriesInstanceUID
    with pytest.raises(DuplicateConflict):
        store.put(encode(ds))
    assert [p.read_bytes() for p in store.instances_dir.rglob("*.dcm")] == [first]
    store.close()


def test_reopening_indexes_complete_files_and_removes_leftovers(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    kept, lost, broken = make_series(3)
    store.put(encode(kept))
    for ds, data in ((lost, encode(lost)), (broken, encode(broken)[:300])):
        final = store.instances_dir / store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                          ds.SOPInstanceUID)
        final.write_bytes(data)  # what a crash between rename and index leaves
    store.close()
    store = InstanceStore(tmp_path)
    assert store.index.instance(lost.SOPInstanceUID) is not None
    assert store.index.instance(broken.SOPInstanceUID) is None
    assert not store.instances_dir.joinpath(store.relative_path(broken.StudyInstanceUID, broken.SeriesInstanceUID,
                                                                broken.SOPInstanceUID)).exists()
    store.close()


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm",
                                  "MR_small_bigendian.dcm", "SC_rgb_rle.dcm", "rtplan.dcm",
                                  "MR_small_implicit.dcm", "SC_rgb_jpeg_gdcm.dcm", "liver_1frame.dcm",
                                  "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_small_odd.dcm", "rtdose.dcm",
                                  "examples_palette.dcm", "SC_rgb_rle_16bit_2frame.dcm", "test-SR.dcm",
                                  "image_dfl.dcm"])
def test_valid_instances_pass_the_checks(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    try:
        scanned = scan_part10(io.BytesIO(data), len(data))
    except NeuroNovaError:
        pytest.skip("refused by the scan already (deflated, or a file meta that disagrees with its dataset)")
    assert check_instance(scanned, max_decoded_bytes=1 << 31) == []


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrX1.dcm", "chrFrenMulti.dcm", "chrRuss.dcm", "chrArab.dcm",
                                  "chrGreek.dcm"])
def test_character_sets_of_pydicoms_corpus_pass(name: str) -> None:
    data = (Path(pydicom.data.__file__).parent / "charset_files" / name).read_bytes()
    scanned = scan_part10(io.BytesIO(data), len(data))
    assert text_warnings(scanned) == []


def test_the_checks_cost_little(tmp_path: Path) -> None:
    data = encode(make_series(1)[0])
    scanned = scan_part10(io.BytesIO(data), len(data))
    start = time.perf_counter()
    for _ in range(1000):
        check_instance(scanned, max_decoded_bytes=1 << 31)
    assert (time.perf_counter() - start) / 1000 < 0.001  # well under a millisecond per instance


def test_concurrent_index_rows_share_commits(tmp_path: Path) -> None:
    """Group commit: rows indexed at the same time go in shared transactions, and every one is there."""
    import contextlib
    import threading
    import time

    from neuronova.store.scan import scan_part10 as scan

    store = InstanceStore(tmp_path)
    commits = []
    real = store.index.transaction

    @contextlib.contextmanager
    def counting():
        commits.append(1)
        with real() as db:
            time.sleep(0.005)  # a commit that takes time (a flush), as on a busy disk: others queue behind it
            yield db

    store.index.transaction = counting  # type: ignore[method-assign]
    series = [encode(ds) for ds in make_series(40)]
    scanned = [scan(io.BytesIO(d), len(d)) for d in series]
    barrier = threading.Barrier(8)

    def index(part: list) -> None:
        barrier.wait()
        for s in part:
            store.index.add_instance(s.attrs, transfer_syntax=s.transfer_syntax, path="x", size=1)

    threads = [threading.Thread(target=index, args=(scanned[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.index.query("SELECT sop_uid FROM instances")) == 40
    assert len(commits) < 40
    store.close()
