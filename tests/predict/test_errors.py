"""Every error code of the guide's table, each provoked for real, with its HTTP status and the one error body."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from neuronova.models import ModelRegistry
from tests.predict.conftest import copy_models, dicom_bytes, picture_bytes

CT = "/predict/ct_classification"
BIOMARKERS = "/predict/biomarker_prediction"
GOOD_BIOMARKERS = {"age": 55, "gender": "M", "tumor_markers": {"CEA": 5.2, "PSA": 12.0}}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


@pytest.mark.parametrize("files, data, words", [
    ({"photo": ("a.png", b"x")}, {"xai": "true"}, "no image"),
    ({"image": ("a.png", b"x")}, {"xai": "maybe"}, "xai"),
    ({"image": ("a.png", b"x")}, {"metadata": "{not json"}, "metadata"),
    ({"image": ("a.png", b"x")}, {"metadata": "[1, 2]"}, "metadata"),
    ({"image": ("a.png", b"x")}, {"xai": "true", "xai_methods": '["shap"]'}, "xai_methods"),
    ({"image": ("a.png", b"x")}, {"request_id": "../../etc"}, "request_id"),
])
def test_invalid_request(client, files, data, words) -> None:
    body = assert_error(client.post(CT, files=files, data=data), 400, "INVALID_REQUEST")
    assert words in body["error"]["message"]


def test_invalid_request_not_multipart(client) -> None:
    assert_error(client.post(CT, json={"image": "x"}), 400, "INVALID_REQUEST")


def test_invalid_request_biomarkers_names_the_field(client) -> None:
    bad = {"patient_id": "P1", "biomarkers": {**GOOD_BIOMARKERS, "age": -3}}
    body = assert_error(client.post(BIOMARKERS, json=bad), 400, "INVALID_REQUEST")
    assert "age" in body["error"]["message"]
    no_marker = {"biomarkers": {"age": 50, "gender": "F", "tumor_markers": {}}}
    assert "marker" in assert_error(client.post(BIOMARKERS, json=no_marker), 400, "INVALID_REQUEST")["error"]["message"]
    assert_error(client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS, "xia": True}), 400, "INVALID_REQUEST")


def test_invalid_image_format(client, windowed_image, mr_study) -> None:
    assert_error(client.post(CT, files={"image": ("a.bin", b"hello, not an image" * 20)}), 400, "INVALID_IMAGE_FORMAT")
    truncated = picture_bytes(windowed_image, "PNG")[:200]
    assert_error(client.post(CT, files={"image": ("a.png", truncated)}), 400, "INVALID_IMAGE_FORMAT")
    # an MR slice is valid DICOM but not a CT image: the request, not the format, is wrong
    body = assert_error(client.post(CT, files={"image": ("mr.dcm", dicom_bytes(mr_study.datasets[0]))}), 400,
                        "INVALID_REQUEST")
    assert "modality MR" in body["error"]["message"]


def test_image_too_large(make_api, ct_slice) -> None:
    api = make_api(max_upload_bytes=64 * 1024)
    with TestClient(api.app) as client:
        data = dicom_bytes(ct_slice)  # about 33 kB: fits
        assert client.post(CT, headers=api.headers(), files={"image": ("a.dcm", data)}).status_code == 200
        big = data + b"\0" * (100 * 1024)
        body = assert_error(client.post(CT, headers=api.headers(), files={"image": ("a.dcm", big)}), 413,
                            "IMAGE_TOO_LARGE")
        assert str(64 * 1024) in body["error"]["message"]
        huge_json = {"biomarkers": GOOD_BIOMARKERS, "patient_id": "x" * (2 * 1024 * 1024)}
        assert_error(client.post(BIOMARKERS, headers=api.headers(), json=huge_json), 413, "IMAGE_TOO_LARGE")


def test_model_not_loaded(make_api, model_dir: Path, tmp_path: Path, ct_slice) -> None:
    only_biomarkers = copy_models(model_dir, tmp_path / "models", ("biomarker_prediction",))
    api = make_api(models=ModelRegistry.load(only_biomarkers, device="cpu", model_ids=("ct_classification",
                                                                                         "mri_segmentation")))
    with TestClient(api.app) as client:
        client.headers.update(api.headers())
        body = assert_error(client.post(CT, files={"image": ("a.dcm", dicom_bytes(ct_slice))}), 503,
                            "MODEL_NOT_LOADED")
        assert "ct_classification" in body["error"]["message"]
        assert_error(client.post("/predict/mri_segmentation", files={"image": ("a.dcm", b"x")}), 503,
                     "MODEL_NOT_LOADED")
        assert_error(client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS}), 503, "MODEL_NOT_LOADED")
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["models"]["ct_classification"]["loaded"] is False


def test_model_inference_error(make_api, model_dir: Path, tmp_path: Path, ct_slice) -> None:
    # A model directory whose card says 64 x 64 while its ONNX graph takes 128 x 128: it loads (without the
    # warm-up, which would catch it), and every inference fails in ONNX Runtime.
    root = copy_models(model_dir, tmp_path / "models", ("ct_classification",))
    card = root / "ct_classification" / "metadata.json"
    meta = json.loads(card.read_text())
    meta["input"]["size"] = [64, 64]
    card.write_text(json.dumps(meta))
    registry = ModelRegistry.load(root, device="cpu", warmup=False, model_ids=("ct_classification",))
    assert "ct_classification" in registry
    api = make_api(models=registry)
    with TestClient(api.app) as client:
        response = client.post(CT, headers=api.headers(), files={"image": ("a.dcm", dicom_bytes(ct_slice))},
                               data={"xai": "true"})
        body = assert_error(response, 500, "MODEL_INFERENCE_ERROR")
        assert "CT classification failed" in body["error"]["message"]


def test_xai_generation_error(make_api, ct_slice) -> None:
    api = make_api(xai_time_budget_seconds=1e-6)
    with TestClient(api.app) as client:
        client.headers.update(api.headers())
        files = {"image": ("a.dcm", dicom_bytes(ct_slice))}
        # by default the prediction stands and the explanation part carries the error
        response = client.post(CT, files=files, data={"xai": "true"})
        assert response.status_code == 200
        body = response.json()
        assert body["result"]["predicted_class"]
        assert body["xai"]["error"]["code"] == "XAI_GENERATION_ERROR"
        assert "budget" in body["xai"]["error"]["message"]
        # with xai_required the explanation is the point: the request fails
        assert_error(client.post(CT, files=files, data={"xai": "true", "xai_required": "true"}), 500,
                     "XAI_GENERATION_ERROR")
        shap = client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS, "xai": True})
        assert shap.status_code == 200 and shap.json()["xai"]["error"]["code"] == "XAI_GENERATION_ERROR"
        assert_error(client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS, "xai": True, "xai_required": True}),
                     500, "XAI_GENERATION_ERROR")


def test_unauthorized(api, ct_slice) -> None:
    with TestClient(api.app) as client:
        files = {"image": ("a.dcm", dicom_bytes(ct_slice))}
        response = client.post(CT, files=files)
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        forged = {"Authorization": "Bearer " + api.token()[:-4] + "AAAA"}
        assert_error(client.post(CT, files=files, headers=forged), 401, "UNAUTHORIZED")
        assert_error(client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS}), 401, "UNAUTHORIZED")
        assert_error(client.get("/predict/task_status/TASK_x"), 401, "UNAUTHORIZED")


def test_rate_limit_exceeded(make_api) -> None:
    api = make_api(rate_limit_per_minute=2)
    with TestClient(api.app) as client:
        client.headers.update(api.headers())
        for _ in range(2):
            assert client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS}).status_code == 200
        response = client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS})
        assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
        assert int(response.headers["Retry-After"]) >= 1
        # the bucket is the subject's: another subject still gets through
        assert client.post(BIOMARKERS, json={"biomarkers": GOOD_BIOMARKERS},
                           headers=api.headers("other")).status_code == 200


def test_unknown_and_malformed_task(client) -> None:
    unknown = "TASK_550e8400-e29b-41d4-a716-446655440000"
    assert_error(client.get(f"/predict/task_status/{unknown}"), 404, "NOT_FOUND")
    assert_error(client.get(f"/predict/task_result/{unknown}/mask.nii.gz"), 404, "NOT_FOUND")
    assert_error(client.get("/predict/task_status/TASK_../../x"), 400, "INVALID_REQUEST")


def test_internal_server_error(api) -> None:
    # The job table (where tasks live) disappears under the running service (a damaged disk, a bad
    # migration): an unexpected sqlite3 error, answered with the generic 500 body and no detail from it.
    with TestClient(api.app, raise_server_exceptions=False) as client:
        client.headers.update(api.headers())
        unknown = "TASK_550e8400-e29b-41d4-a716-446655440000"
        assert client.get(f"/predict/task_status/{unknown}").status_code == 404  # the service is up
        with sqlite3.connect(api.settings.data_dir / "jobs.sqlite3") as db:
            db.execute("DROP TABLE jobs")
        body = assert_error(client.get(f"/predict/task_status/{unknown}"), 500, "INTERNAL_SERVER_ERROR")
        assert "jobs" not in body["error"]["message"]  # sqlite's message stays in the log


def test_cors_origins_are_configurable(make_api) -> None:
    api = make_api(cors_origins=("https://viewer.example",))
    with TestClient(api.app) as client:
        preflight = client.options(CT, headers={"Origin": "https://viewer.example",
                                                "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example"
        other = client.options(CT, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
