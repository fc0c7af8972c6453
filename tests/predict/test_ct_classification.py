"""POST /predict/ct_classification: DICOM, PNG and JPEG in; the guide's response with Grad-CAM out."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from neuronova.models.classification import ClassificationModel
from neuronova.pipelines.inference import classify_dicom_slice, classify_image
from tests.predict.conftest import dicom_bytes, picture_bytes

URL = "/predict/ct_classification"


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB"))


def test_dicom_slice_with_grad_cam(client, registry, ct_slice) -> None:
    response = client.post(URL, files={"image": ("slice.dcm", dicom_bytes(ct_slice), "application/dicom")},
                           data={"xai": "true", "xai_methods": '["grad_cam"]', "request_id": "REQ_20251128_001",
                                 "patient_id": "P123456",
                                 "metadata": '{"slice_thickness": 2.5, "kvp": 120, "study_date": "2025-11-28"}'})
    assert response.status_code == 200, response.text
    body = response.json()
    model = registry.get("ct_classification", ClassificationModel)
    assert body["success"] is True and body["request_id"] == "REQ_20251128_001"
    assert body["model_id"] == "ct_classification" and body["model_version"] == model.version
    assert body["inference_time_ms"] > 0
    result = body["result"]
    assert set(result["probabilities"]) == set(model.classes)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["predicted_class"] == max(result["probabilities"], key=result["probabilities"].get)
    assert result["confidence"] == result["probabilities"][result["predicted_class"]]
    # the same answer as the pipeline gives for the same slice
    expected = classify_dicom_slice(ct_slice, model)
    for name, p in expected.probabilities.items():
        assert result["probabilities"][name] == pytest.approx(p, abs=1e-5)
    assert "P123456" not in response.text  # the patient id is not echoed

    cam = body["xai"]["grad_cam"]
    rows, columns = int(ct_slice.Rows), int(ct_slice.Columns)
    heat = decode_data_url(cam["heatmap_base64"])
    overlay = decode_data_url(cam["overlay_base64"])
    assert heat.shape == (rows, columns, 3) and overlay.shape == (rows, columns, 3)
    assert cam["target_class"] == result["predicted_class"]
    assert cam["important_regions"], "a normalised heatmap has at least its peak region"
    spacing = [float(v) for v in ct_slice.PixelSpacing]
    origin = np.asarray(ct_slice.ImagePositionPatient, float)
    for region in cam["important_regions"]:
        assert 0 <= region["x"] < columns and 0 <= region["y"] < rows
        assert region["x"] + region["width"] <= columns and region["y"] + region["height"] <= rows
        assert 0.5 <= region["importance"] <= 1.0
        patient = region["patient_coordinates"]
        # axial slice: LPS x = origin x + column * spacing; the box centre in pixel centres
        centre_col = region["x"] + (region["width"] - 1) / 2
        centre_row = region["y"] + (region["height"] - 1) / 2
        assert patient["centre"][0] == pytest.approx(origin[0] + centre_col * spacing[1], abs=1e-2)
        assert patient["centre"][1] == pytest.approx(origin[1] + centre_row * spacing[0], abs=1e-2)
        assert patient["centre"][2] == pytest.approx(origin[2], abs=1e-2)
        assert patient["width_mm"] == pytest.approx(region["width"] * spacing[1], abs=1e-2)
    assert cam["important_regions"][0]["importance"] == pytest.approx(1.0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pictures_at_their_own_resolution(client, registry, windowed_image, fmt) -> None:
    data = picture_bytes(windowed_image, fmt)
    response = client.post(URL, files={"image": (f"x.{fmt.lower()}", data, f"image/{fmt.lower()}")},
                           data={"xai": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    model = registry.get("ct_classification", ClassificationModel)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    expected = classify_image(decoded, model)
    for name, p in expected.probabilities.items():
        assert body["result"]["probabilities"][name] == pytest.approx(p, abs=1e-5)
    cam = body["xai"]["grad_cam"]
    assert cam["image_size"] == {"rows": 150, "columns": 130}  # not the network's 128 x 128, not padded
    assert decode_data_url(cam["heatmap_base64"]).shape == (150, 130, 3)
    for region in cam["important_regions"]:
        assert "patient_coordinates" not in region  # a picture has no patient geometry
        assert region["x"] + region["width"] <= 130 and region["y"] + region["height"] <= 150


def test_explanation_does_not_change_the_answer(client, ct_slice) -> None:
    files = {"image": ("slice.dcm", dicom_bytes(ct_slice))}
    plain = client.post(URL, files=files, data={"xai": "false"}).json()
    explained = client.post(URL, files=files, data={"xai": "true"}).json()
    assert plain["xai"] is None and "grad_cam" in explained["xai"]
    for name, p in plain["result"]["probabilities"].items():
        assert explained["result"]["probabilities"][name] == pytest.approx(p, abs=1e-6)
    assert plain["request_id"].startswith("REQ_") and plain["request_id"] != explained["request_id"]
