"""The four-sequence trainer in its quick mode: real phantoms, a few steps, export, and a model the registry
loads as a study-level VolumeSegmenter (its quality is not the point here; the shipped card holds that)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neuronova.models import ModelRegistry
from neuronova.models.multiseq import StudySegmentationModel
from neuronova.models.train_multiseq import MODEL_ID, ROLES, train, training_sample


def test_training_samples_are_ras_and_reproducible() -> None:
    a_image, a_labels = training_sample(4242)
    b_image, b_labels = training_sample(4242)
    assert a_image.shape == (len(ROLES), 139, 160, 117) and np.array_equal(a_image, b_image)
    assert np.array_equal(a_labels, b_labels)
    # normalised per channel over the head: the head's mean is about 0
    head = a_labels >= 0
    assert all(abs(float(c.astype(np.float32)[head].mean())) < 2 for c in a_image)


def test_quick_training_exports_a_loadable_study_model(tmp_path: Path) -> None:
    metadata = train(tmp_path / MODEL_ID, seed=3, quick=True)
    card = json.loads((tmp_path / MODEL_ID / "metadata.json").read_text())
    assert card["input"]["roles"] == list(ROLES) and card["training"]["quick"] is True
    assert metadata.metrics["onnx_max_abs_diff"] < 1e-3
    model = ModelRegistry.load(tmp_path, device="cpu", model_ids=(MODEL_ID,)).get(MODEL_ID)
    assert isinstance(model, StudySegmentationModel)
    roi = model.roi_size
    assert roi is not None
    out = model.infer(np.zeros((len(ROLES), *roi), np.float32))
    assert out.shape == (4, *roi) and np.allclose(out.sum(0), 1.0, atol=1e-4)
