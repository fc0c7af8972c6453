"""Temperature scaling, the top-label ECE and the indeterminate threshold; the shipped CT model applies them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from neuronova.models.classification import (
    CALIBRATION_FILE,
    INDETERMINATE,
    ClassificationModel,
    choose_indeterminate_threshold,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from neuronova.models.metadata import read_metadata, sha256_file, write_metadata
from neuronova.models.registry import DEFAULT_MODEL_DIR, load_model
from neuronova.phantoms import make_ct_study


def _sampled(temperature: float, n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): that temperature is the calibrated one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 4))
    p = softmax(logits, temperature)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return logits, labels


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    logits, labels = _sampled(2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)
    logits, labels = _sampled(0.6, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(0.6, rel=0.1)


def test_ece_is_small_when_calibrated_large_when_not_and_scaling_repairs_it():
    logits, labels = _sampled(2.5)
    calibrated = expected_calibration_error(softmax(logits, 2.5), labels)
    overconfident = expected_calibration_error(softmax(logits), labels)
    assert calibrated < 0.03 < 0.1 < overconfident
    assert expected_calibration_error(softmax(logits, fit_temperature(logits, labels)), labels) < 0.03


def test_ece_by_hand():
    # four predictions at confidence 0.9, three right: |0.75 - 0.9| = 0.15; two at 0.6, both right: 0.4
    probabilities = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx((4 * 0.15 + 2 * 0.4) / 6)
    with pytest.raises(ValueError):
        expected_calibration_error(probabilities, labels[:3])


def test_threshold_is_the_lowest_that_reaches_the_target_accuracy():
    confidence = np.array([0.52, 0.58, 0.62, 0.72, 0.8, 0.9, 0.95, 0.97, 0.99, 0.99])
    correct = np.array([False, False, True, True, True, True, True, True, True, True])
    # kept at 0.50: 8/10 right; at 0.55: 8/9; at 0.60: 8/8
    assert choose_indeterminate_threshold(confidence, correct, target_accuracy=0.95) == pytest.approx(0.6)
    assert choose_indeterminate_threshold(confidence, np.ones(10, bool)) == pytest.approx(0.5)  # the floor
    assert choose_indeterminate_threshold(confidence, np.zeros(10, bool)) == pytest.approx(0.95)


@pytest.fixture(scope="module")
def ct_model() -> ClassificationModel:
    entry = load_model(DEFAULT_MODEL_DIR / "ct_classification", device="cpu")
    assert entry.model is not None, entry.error
    return entry.model  # type: ignore[return-value]


def test_shipped_model_is_calibrated_and_its_calibration_is_a_hashed_file(ct_model):
    metadata = read_metadata(DEFAULT_MODEL_DIR / "ct_classification")
    assert CALIBRATION_FILE in metadata.files
    calibration = json.loads((DEFAULT_MODEL_DIR / "ct_classification" / CALIBRATION_FILE).read_text())
    assert ct_model.temperature == pytest.approx(calibration["temperature"]) and ct_model.temperature != 1.0
    assert 0.5 <= ct_model.indeterminate_below == calibration["indeterminate_below"] <= 0.95
    report = metadata.metrics["calibration"]
    assert report["ece_heldout_slices_after"] >= 0 and report["ece_heldout_slices_before"] >= 0

    study = make_ct_study(616_161, n_slices=12, matrix=128, tumour_class="Meningioma")
    batch = ct_model.preprocess_slices(study.phantom.image)
    np.testing.assert_allclose(ct_model.predict_proba(batch), softmax(ct_model.run(batch), ct_model.temperature),
                               atol=1e-5)


def test_a_changed_calibration_file_is_refused_until_rehashed(tmp_path):
    path = tmp_path / "ct_classification"
    shutil.copytree(DEFAULT_MODEL_DIR / "ct_classification", path)
    calibration = json.loads((path / CALIBRATION_FILE).read_text())
    (path / CALIBRATION_FILE).write_text(json.dumps({**calibration, "indeterminate_below": 0.99}))
    assert not load_model(path, device="cpu").loaded
    metadata = read_metadata(path)
    metadata.files[CALIBRATION_FILE] = sha256_file(path / CALIBRATION_FILE)
    write_metadata(path, metadata)
    strict = load_model(path, device="cpu").model
    assert isinstance(strict, ClassificationModel) and strict.indeterminate_below == 0.99

    study = make_ct_study(616_162, n_slices=16, matrix=128, tumour_class="Glioma")
    result = strict.classify_volume(study.phantom.image, pixel_area_mm2=study.phantom.spacing[1] ** 2)
    assert result.confidence < 0.99 and result.indeterminate and result.outcome == INDETERMINATE
    assert result.predicted_class == max(result.probabilities, key=result.probabilities.get)
    assert strict.outcome(np.array([0.995, 0.005, 0, 0])) == "Glioma"
    assert strict.outcome(np.array([0.4, 0.3, 0.2, 0.1])) == INDETERMINATE
    (path / CALIBRATION_FILE).write_text(json.dumps({"temperature": -1.0}))
    metadata.files[CALIBRATION_FILE] = sha256_file(path / CALIBRATION_FILE)
    write_metadata(path, metadata)
    refused = load_model(path, device="cpu")
    assert not refused.loaded and "temperature" in (refused.error or "")


def test_shipped_onnx_carries_no_exporter_stack_traces():
    import onnx

    model = onnx.load(str(DEFAULT_MODEL_DIR / "ct_classification" / "model.onnx"))
    assert not model.doc_string and not model.metadata_props
    for node in model.graph.node:
        assert not node.doc_string and not node.metadata_props, node.name
