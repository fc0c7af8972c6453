"""End to end with a real Orthanc: a study stored in Orthanc is auto-routed (orthanc/autoroute.lua) to the
node, processed, and the SEG, SR and overlays come back into the same study in Orthanc."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pydicom
import pytest

from neuronova.phantoms.dicom import make_ct_study, make_mr_study, write_series
from tests.conftest import REPO, OrthancProcess, dciodvfy_errors, get_port, storescu, wait_for

pytestmark = pytest.mark.slow

RESULT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
}


def _orthanc_results(orthanc: OrthancProcess, study_uid: str) -> dict[str, int]:
    """QIDO-RS on Orthanc: the node's result instances in the study, by kind."""
    r = httpx.get(f"{orthanc.url}/dicom-web/studies/{study_uid}/instances", timeout=10)
    if r.status_code != 200:
        return {}
    counts: dict[str, int] = {}
    for item in r.json():
        kind = RESULT_SOP_CLASSES.get(item["00080016"]["Value"][0])
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


_wait = partial(wait_for, interval=0.5)  # polls the node over HTTP: twice a second is enough


def _study_status(node, study_uid: str) -> dict:
    return httpx.get(f"{node.url}/api/v1/studies/{study_uid}", headers=node.headers, timeout=10).json()


def _jobs_done(node, study_uid: str, pipelines: set[str]) -> dict | None:
    status = _study_status(node, study_uid)
    jobs = {j["pipeline"]: j for j in status.get("jobs", [])}
    if pipelines <= set(jobs) and all(jobs[p]["state"] == "done" for p in pipelines):
        return status
    failed = [j for j in jobs.values() if j["state"] == "failed"]
    assert not failed, failed
    return None


def _validate_results(node, status: dict) -> None:
    """Every result the node wrote is valid DICOM (dciodvfy: zero errors) and is in its own store."""
    uids = [r["sop_instance_uid"] for j in status["jobs"] for r in j.get("results", [])]
    assert uids
    for uid in uids:
        (path,) = node.data_dir.glob(f"instances/*/*/{uid}.dcm")
        assert dciodvfy_errors(path) == [], path


def _setup(tmp_path: Path, node_factory, *, destination: str | None = None, lua: bool = True):
    orthanc = OrthancProcess(root=tmp_path / "orthanc", http_port=get_port(), dicom_port=get_port())
    node = node_factory(start=False)
    orthanc.modalities = {"neuronova": ["NEURONOVA", "127.0.0.1", node.dimse_port]}
    if lua:
        orthanc.lua_scripts = [str(REPO / "orthanc" / "autoroute.lua")]
    dest = destination or f"dimse://ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    node.extra_args += ["--stable-seconds", "1", "--allowed-ae", "ORTHANC", "--allowed-ae", "STORESCU",
                        "--destination", dest.format(orthanc=orthanc)]
    return orthanc, node


def test_mri_study_round_trip_by_cstore(tmp_path: Path, node_factory) -> None:
    orthanc, node = _setup(tmp_path, node_factory)
    orthanc.start()
    try:
        node.start()
        study = make_mr_study(11, shape=(48, 128, 128), n_tumours=1)
        files = write_series(study.datasets, tmp_path / "mr")
        assert storescu(orthanc.dicom_port, files, aec="ORTHANC").returncode == 0
        study_uid = study.datasets[0].StudyInstanceUID
        counts = _wait(lambda: (c := _orthanc_results(orthanc, study_uid)) and {"SEG", "SR", "SC"} <= set(c) and c,
                       180, "SEG, SR and overlays in Orthanc")
        assert counts["SEG"] == 1 and counts["SR"] == 1 and counts["SC"] >= 1
        status = _wait(lambda: _jobs_done(node, study_uid, {"mri_segmentation"}), 60, "job done")
        job = next(j for j in status["jobs"] if j["pipeline"] == "mri_segmentation")
        assert job["progress"] == 100
        assert job["summary"]["volumes_ml"]["whole tumour"] > 0
        _validate_results(node, status)
        # the SEG in Orthanc references the source series and carries the node's algorithm
        seg_uid = next(r["sop_instance_uid"] for r in job["results"]
                       if r["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.66.4")
        oid = httpx.post(f"{orthanc.url}/tools/lookup", content=seg_uid).json()[0]["ID"]
        seg = pydicom.dcmread(__import__("io").BytesIO(httpx.get(f"{orthanc.url}/instances/{oid}/file").content))
        assert seg.StudyInstanceUID == study_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.datasets[0].SeriesInstanceUID
        assert "NOT FOR CLINICAL USE" in seg.SeriesDescription
    finally:
        node.stop()
        orthanc.stop()


def test_ct_and_mr_round_trip_by_stowrs(tmp_path: Path, node_factory) -> None:
    orthanc, node = _setup(tmp_path, node_factory, destination="http://127.0.0.1:{orthanc.http_port}/dicom-web")
    orthanc.start()
    try:
        node.start()
        ct = make_ct_study(5, n_slices=24, matrix=160, tumour_class="Meningioma")
        files = write_series(ct.datasets, tmp_path / "ct")
        assert storescu(orthanc.dicom_port, files, aec="ORTHANC").returncode == 0
        study_uid = ct.datasets[0].StudyInstanceUID
        counts = _wait(lambda: (c := _orthanc_results(orthanc, study_uid)) and {"SR", "SC"} <= set(c) and c,
                       180, "SR and overlay in Orthanc")
        assert counts == {"SR": 1, "SC": 1}
        status = _wait(lambda: _jobs_done(node, study_uid, {"ct_classification"}), 60, "job done")
        summary = next(j for j in status["jobs"] if j["pipeline"] == "ct_classification")["summary"]
        assert summary["predicted_class"] in {"Glioma", "Meningioma", "Pituitary", "No Tumor"}
        assert abs(sum(summary["probabilities"].values()) - 1) < 1e-3
        _validate_results(node, status)
    finally:
        node.stop()
        orthanc.stop()


def test_results_wait_for_a_stopped_orthanc(tmp_path: Path, node_factory) -> None:
    orthanc, node = _setup(tmp_path, node_factory, lua=False)
    node.start()  # Orthanc is down
    study = make_mr_study(12, shape=(40, 128, 128), n_tumours=1)
    files = write_series(study.datasets, tmp_path / "mr")
    assert storescu(node.dimse_port, files).returncode == 0  # the study reaches the node directly
    study_uid = study.datasets[0].StudyInstanceUID

    def sending() -> dict | None:
        jobs = _study_status(node, study_uid).get("jobs", [])
        return jobs[0] if jobs and jobs[0]["state"] == "sending" else None

    job = _wait(sending, 120, "the job to wait in 'sending'")
    assert job["state"] == "sending"
    orthanc.start()
    try:
        _wait(lambda: {"SEG", "SR", "SC"} <= set(_orthanc_results(orthanc, study_uid)), 120,
              "results after Orthanc restarted")
        _wait(lambda: _jobs_done(node, study_uid, {"mri_segmentation"}), 60, "job done")
    finally:
        node.stop()
        orthanc.stop()
