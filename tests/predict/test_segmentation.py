"""POST /predict/mri_segmentation: asynchronous tasks, their status, their files, and restarts."""

from __future__ import annotations

import gzip
import io
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from neuronova.models.segmentation import SegmentationModel
from neuronova.pipelines.volume import load_series
from neuronova.predict.segmentation import nifti_affine
from neuronova.api.app import create_app
from neuronova.api.auth import mint_token
from neuronova.config import Settings
from neuronova.phantoms import make_mr_study
from neuronova.predict.tasks import task_job_id
from neuronova.store import InstanceStore
from tests.predict.conftest import dicom_bytes, mr_zip, nifti_gz, wait_task

URL = "/predict/mri_segmentation"


def load_nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


@pytest.mark.slow
def test_zip_of_a_dicom_series_through_a_real_server(make_api, serve, registry, mr_study) -> None:
    server = serve(make_api())
    headers = server.api.headers()
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        created = http.post(URL, files={"image": ("series.zip", mr_zip(mr_study), "application/zip")},
                            data={"patient_id": "P123456", "request_id": "REQ_2", "sequence_type": "T1", "xai": "true"})
        assert created.status_code == 202, created.text
        task = created.json()
        assert task["success"] is True and task["status"] == "pending" and task["request_id"] == "REQ_2"
        assert task["task_id"].startswith("TASK_") and task["estimated_time_seconds"] > 0
        assert task["status_url"] == f"/predict/task_status/{task['task_id']}"
        body = wait_task(http.get, task["status_url"])
        assert body["status"] == "completed", body
        assert body["progress"] == 100
        result = body["result"]

        model = registry.get("mri_segmentation", SegmentationModel)
        volume = load_series(mr_study.datasets)
        expected = model.predict(volume.array)
        assert set(result["volumes_ml"]) == {*model.label_names.values(), "whole tumour"}
        for value, name in model.label_names.items():
            assert result["volumes_ml"][name] == pytest.approx((expected == value).sum() * volume.voxel_volume_ml,
                                                                abs=1e-3)

        # the mask, as NIfTI, in the series' geometry; downloading needs the token too
        assert httpx.get(server.url + result["mask_url"]).status_code == 401
        mask_response = http.get(result["mask_url"])
        assert mask_response.status_code == 200
        mask = load_nifti(mask_response.content)
        np.testing.assert_array_equal(np.asarray(mask.dataobj).transpose(2, 1, 0), expected)
        np.testing.assert_allclose(mask.affine, nifti_affine(volume.affine), atol=1e-4)
        # voxel (i, j, k) of the NIfTI is (x, y, z) of slice z: RAS = LPS with x and y negated
        lps = volume.index_to_patient((5, 7, 11))
        ras = mask.affine @ np.array([11, 7, 5, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)

        # the SEG references the uploaded series
        seg = pydicom.dcmread(io.BytesIO(http.get(result["seg_url"]).content))
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mr_study.series_instance_uid
        assert seg.SOPInstanceUID == result["seg"]["sop_instance_uid"]

        cam = result["xai"]["grad_cam"]
        assert cam["key_slices"], cam
        for item in cam["key_slices"]:
            png = http.get(item["overlay_url"])
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert item["sop_instance_uid"] == volume.datasets[item["slice_index"]].SOPInstanceUID

        # another subject sees nothing of it
        other = server.api.headers("someone-else")
        assert http.get(task["status_url"], headers=other).status_code == 404
        assert http.get(result["mask_url"], headers=other).status_code == 404
        assert http.get(f"/predict/task_result/{task['task_id']}/..%2Ftasks.sqlite3").status_code == 404
    # the upload is not kept once the task is done
    task_dir = server.api.settings.data_dir / "predict" / task["task_id"]
    assert not (task_dir / "input").exists() and (task_dir / "result" / "mask.nii.gz").is_file()


@pytest.mark.slow
def test_nifti_and_several_dicom_files(client, registry, mr_study) -> None:
    volume = load_series(mr_study.datasets)
    affine = np.array([[-0.9, 0, 0, 40], [0, 1.1, 0, -30], [0, 0, 2.5, 10], [0, 0, 0, 1]])
    data = nifti_gz(volume.array.transpose(2, 1, 0), affine)
    created = client.post(URL, files={"image": ("t1.nii.gz", data, "application/gzip")})
    assert created.status_code == 202, created.text
    body = wait_task(client.get, created.json()["status_url"])
    assert body["status"] == "completed", body
    result = body["result"]
    assert "seg_url" not in result and result["input"]["kind"] == "nifti" and result.get("xai") is None
    mask = load_nifti(client.get(result["mask_url"]).content)
    np.testing.assert_allclose(mask.affine, affine)
    model = registry.get("mri_segmentation", SegmentationModel)
    np.testing.assert_array_equal(np.asarray(mask.dataobj).transpose(2, 1, 0), model.predict(volume.array))
    assert result["volumes_ml"]["whole tumour"] == pytest.approx(
        (model.predict(volume.array) > 0).sum() * 0.9 * 1.1 * 2.5 / 1000, abs=1e-3)

    files = [("image", (f"{i}.dcm", dicom_bytes(ds), "application/dicom")) for i, ds in enumerate(mr_study.datasets)]
    created = client.post(URL, files=files)
    assert created.status_code == 202, created.text
    assert wait_task(client.get, created.json()["status_url"])["status"] == "completed"


def test_a_bad_series_is_refused_at_once(client, mr_study, ct_slice) -> None:
    gap = [ds for i, ds in enumerate(mr_study.datasets) if i != 10]
    files = [("image", (f"{i}.dcm", dicom_bytes(ds))) for i, ds in enumerate(gap)]
    response = client.post(URL, files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "INVALID_IMAGE_FORMAT"
    assert "missing slice" in response.json()["error"]["message"]
    response = client.post(URL, files={"image": ("ct.dcm", dicom_bytes(ct_slice))})
    assert response.status_code == 400 and "MR series" in response.json()["error"]["message"]
    response = client.post(URL, files={"image": ("x.zip", b"PK\x03\x04 broken")})
    assert response.status_code == 400 and response.json()["error"]["code"] == "INVALID_IMAGE_FORMAT"
    # nothing is left behind by refused uploads
    assert [p.name for p in (client.app.state.settings.data_dir / "predict").iterdir() if p.is_dir()] == []


@pytest.mark.slow
def test_a_task_interrupted_by_a_killed_node_resumes_after_the_restart(node_factory, registry) -> None:
    """The task is a job of the node's queue: kill -9 of the node mid-task leaves its lease to expire; the
    restarted node's reconciler queues it again and it completes (the old thread pool failed it)."""
    study = make_mr_study(11, shape=(48, 128, 128), n_tumours=1)
    node = node_factory(env={"NEURONOVA_HEARTBEAT_SECONDS": "1"})
    with httpx.Client(base_url=node.url, headers=node.headers, timeout=60) as http:
        created = http.post(URL, files={"image": ("s.zip", mr_zip(study))}, data={"xai": "true"})
        assert created.status_code == 202, created.text
        status_url = created.json()["status_url"]
        task_id = created.json()["task_id"]
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.append(http.get(status_url).json()["status"])
            if seen[-1] != "pending":
                break
            time.sleep(0.02)
        assert seen[-1] == "running", seen  # killed while its worker runs it
    node.kill()
    node.start()
    with httpx.Client(base_url=node.url, headers=node.headers, timeout=60) as http:
        body = wait_task(http.get, status_url, timeout=120)
        assert body["status"] == "completed", body
        volume = load_series(study.datasets)
        mask = load_nifti(http.get(body["result"]["mask_url"]).content)
        expected = registry.get("mri_segmentation", SegmentationModel).predict(volume.array)
        np.testing.assert_array_equal(np.asarray(mask.dataobj).transpose(2, 1, 0), expected)
        job = http.get(f"/api/v1/jobs/{task_job_id(task_id, 'mri_segmentation')}").json()
        assert job["pipeline"] == "predict.mri_segmentation" and job["state"] == "done"
        assert job["attempts"] == 2  # the killed run, then the one that finished
    assert not (node.data_dir / "predict" / task_id / "input").exists()


def test_an_app_without_a_job_system_refuses_tasks(tmp_path: Path, registry, mr_study) -> None:
    """The predict API alone (no node around it) has no queue to run a task on: 503, not a thread of its own."""
    secret = "s" * 32
    settings = Settings(data_dir=tmp_path / "data", jwt_secret=secret)
    store = InstanceStore(settings.data_dir)
    try:
        app = create_app(settings=settings, store=store, state={"models": registry})
        with TestClient(app) as client:
            client.headers["Authorization"] = "Bearer " + mint_token(secret, sub="t", audience="neuronova",
                                                                     issuer="neuronova")
            response = client.post(URL, files={"image": ("s.zip", mr_zip(mr_study))})
            assert response.status_code == 503 and response.json()["error"]["code"] == "MODEL_NOT_LOADED"
            assert "job queue" in response.json()["error"]["message"]
    finally:
        store.close()


def test_a_failed_explanation_leaves_the_segmentation(make_api, mr_study) -> None:
    api = make_api(xai_time_budget_seconds=1e-6)
    with TestClient(api.app) as client:
        client.headers.update(api.headers())
        created = client.post(URL, files={"image": ("s.zip", mr_zip(mr_study))}, data={"xai": "true"})
        body = wait_task(client.get, created.json()["status_url"])
    assert body["status"] == "completed", body
    assert body["result"]["xai"]["error"]["code"] == "XAI_GENERATION_ERROR"
    assert body["result"]["mask_url"] and body["result"]["seg_url"] and body["result"]["volumes_ml"]
