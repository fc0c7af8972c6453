"""A re-run leaves exactly one result set in the PACS: a real node, a real Orthanc configured as shipped
(orthanc/orthanc.json: OverwriteInstances) and the destination's ``orthanc=`` REST URL for removing stale
results. Run 1 on a study with three tumours (SEG, SR, an overlay per key slice: 3); the series' pixels change
(one tumour: 2 key slices) and the study is reprocessed; Orthanc then holds exactly run 2's results, with run
2's content."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import httpx
import pydicom
import pytest

from neuronova.phantoms.dicom import make_mr_study, write_series
from tests.conftest import dciodvfy_errors, get_port, storescu, wait_for
from tests.outbox.conftest import ShippedOrthanc

pytestmark = pytest.mark.slow

_wait = partial(wait_for, interval=0.5)  # polls the node over HTTP: twice a second is enough


def _job(node, study_uid: str, run: int) -> dict | None:
    r = httpx.get(f"{node.url}/api/v1/studies/{study_uid}", headers=node.headers, timeout=10)
    jobs = [j for j in r.json().get("jobs", []) if j["pipeline"] == "mri_segmentation"]
    failed = [(j["run"], j.get("error_code"), j.get("error_message")) for j in jobs if j["state"] == "failed"]
    assert not failed, failed
    return next((j for j in jobs if j["run"] == run and j["state"] == "done"), None)


def _orthanc_results(orthanc: ShippedOrthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    """Every instance Orthanc holds in the study (the inputs go to the node only, so all are results, whatever
    their kind: SEG, SR, SC, parametric map...), read back as files, by SOP Instance UID."""
    r = httpx.get(f"{orthanc.url}/dicom-web/studies/{study_uid}/instances", timeout=10)
    out = {}
    for item in r.json() if r.status_code == 200 else []:
        uid = item["00080018"]["Value"][0]
        oid = httpx.post(f"{orthanc.url}/tools/lookup", content=uid, timeout=10).json()[0]["ID"]
        out[uid] = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc.url}/instances/{oid}/file", timeout=30).content))
    return out


def _node_copy(node, uid: str) -> Path:
    (path,) = node.data_dir.glob(f"instances/*/*/{uid}.dcm")
    return path


def test_rerun_with_fewer_results_leaves_one_result_set(tmp_path: Path, node_factory) -> None:
    orthanc = ShippedOrthanc(root=tmp_path / "orthanc", http_port=get_port(), dicom_port=get_port())
    node = node_factory(start=False, env={"NEURONOVA_DUPLICATE_POLICY": "replace"})
    node.extra_args += ["--stable-seconds", "1", "--destination",
                        f"dimse://ORTHANC@127.0.0.1:{orthanc.dicom_port}?orthanc={orthanc.url}"]
    orthanc.start()
    try:
        node.start(timeout=180)  # models load and warm up first; the machine may be busy
        study = make_mr_study(21, shape=(40, 128, 128), n_tumours=3)
        files = write_series(study.datasets, tmp_path / "run1")
        assert storescu(node.dimse_port, files).returncode == 0
        study_uid = study.datasets[0].StudyInstanceUID
        first = _wait(lambda: _job(node, study_uid, 1), 240, "run 1 done")
        run1 = {r["sop_instance_uid"] for r in first["results"]}
        assert set(_orthanc_results(orthanc, study_uid)) == run1

        # The series changes (same UIDs, one tumour instead of three): the node replaces it, then it is
        # reprocessed.
        calm = make_mr_study(24, shape=(40, 128, 128), n_tumours=1)  # 2 key slices against 3
        for ds, new in zip(study.datasets, calm.datasets, strict=True):
            ds.PixelData = new.PixelData
        files = write_series(study.datasets, tmp_path / "run2")
        assert storescu(node.dimse_port, files).returncode == 0
        r = httpx.post(f"{node.url}/api/v1/studies/{study_uid}/reprocess", headers=node.headers, timeout=30)
        assert r.status_code == 202, r.text
        second = _wait(lambda: _job(node, study_uid, 2), 240, "run 2 done")
        run2 = {r["sop_instance_uid"] for r in second["results"]}
        assert len(run2) < len(run1), (len(run1), len(run2))  # the premise: the re-run writes fewer results

        held = _orthanc_results(orthanc, study_uid)
        assert set(held) == run2  # exactly one result set: run 2's, the stale ones removed
        for uid, ds in held.items():  # with run 2's content (replaced in place), valid DICOM
            path = _node_copy(node, uid)
            assert dciodvfy_errors(path) == [], path
            mine = pydicom.dcmread(path)
            assert ds.ContentTime == mine.ContentTime and ds.get("PixelData") == mine.get("PixelData")
    finally:
        node.stop()
        orthanc.stop()
