"""POST /predict/biomarker_prediction: three outputs, SHAP that adds up to the model's output."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from neuronova.models.biomarkers import FEATURES, BiomarkerModel

URL = "/predict/biomarker_prediction"
REQUEST = {"patient_id": "P123456", "request_id": "REQ_3",
           "biomarkers": {"age": 55, "gender": "M", "tumor_markers": {"CEA": 5.2, "CA19-9": 40.0, "LDH": 310}},
           "xai": True}


def test_prediction_and_shap_reproduce_the_model(client, registry) -> None:
    response = client.post(URL, json=REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    model = registry.get("biomarker_prediction", BiomarkerModel)
    assert body["request_id"] == "REQ_3" and body["model_version"] == model.version
    assert set(body["result"]) == {"tumor_type", "metastasis_site", "metastasis_degree"}

    row = np.full((1, len(FEATURES)), np.nan)
    row[0, :2] = [55, 1.0]
    for name, value in {"CEA": 5.2, "CA19-9": 40.0, "LDH": 310}.items():
        row[0, FEATURES.index(name)] = value
    for output, estimator in model.estimators.items():
        prediction = body["result"][output]
        probabilities = estimator.predict_proba(row)[0]
        assert list(prediction["probabilities"]) == model.classes[output]
        np.testing.assert_allclose(list(prediction["probabilities"].values()), probabilities, atol=1e-9)
        assert prediction["predicted"] == model.classes[output][int(np.argmax(probabilities))]

        shap = body["xai"]["shap"][output]
        assert shap["predicted_class"] == prediction["predicted"]
        raw = np.asarray(estimator.decision_function(row)).reshape(-1)
        outputs = []
        for k, name in enumerate(model.classes[output]):
            part = shap["classes"][name]
            assert set(part["contributions"]) == set(FEATURES)
            reconstructed = part["base_value"] + sum(part["contributions"].values())
            model_output = raw[k] if raw.size > 1 else (raw[0] if k == 1 else -raw[0])
            assert reconstructed == pytest.approx(model_output, abs=1e-6)  # base + contributions = f(x)
            assert part["output"] == pytest.approx(model_output, abs=1e-9)
            outputs.append(reconstructed)
        # and the reconstructed outputs give back the probabilities the API answered
        softmax = np.exp(outputs - np.max(outputs)) / np.exp(outputs - np.max(outputs)).sum()
        np.testing.assert_allclose(softmax, probabilities, atol=1e-6)
        predicted = shap["classes"][shap["predicted_class"]]
        assert shap["base_value"] == predicted["base_value"]
        assert shap["contributions"] == predicted["contributions"]
        assert shap["feature_values"]["AFP"] is None and shap["feature_values"]["age"] == 55
        assert base64.b64decode(shap["plot_base64"].split(",", 1)[1]).startswith(b"\x89PNG")
    assert "P123456" not in response.text


def test_without_xai_and_with_marker_aliases(client) -> None:
    body = client.post(URL, json={"biomarkers": {"age": 61, "gender": "female",
                                                 "tumor_markers": {"CA125": 80.0, "CA 15-3": 20}}}).json()
    assert body["success"] is True and body["xai"] is None
    assert body["request_id"].startswith("REQ_")
    for prediction in body["result"].values():
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
