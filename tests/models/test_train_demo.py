import json

import pytest

from neuronova.models import MODEL_IDS, ModelRegistry
from neuronova.models.metadata import read_metadata
from neuronova.models.train_demo import main


@pytest.mark.slow
def test_quick_training_writes_loadable_reproducible_models(tmp_path):
    results = main(tmp_path / "a", seed=3, quick=True)
    assert set(results) == set(MODEL_IDS)
    registry = ModelRegistry.load(tmp_path / "a", device="cpu")
    for model_id in MODEL_IDS:
        assert registry.entries[model_id].loaded, registry.entries[model_id].error
        metadata = read_metadata(tmp_path / "a" / model_id)
        assert metadata.metrics and metadata.not_for_clinical_use
    assert read_metadata(tmp_path / "a" / "mri_segmentation").metrics["onnx_max_abs_diff"] < 1e-3
    assert "dice_whole_tumour_mean" in read_metadata(tmp_path / "a" / "mri_segmentation").metrics
    assert "heldout_study_accuracy" in read_metadata(tmp_path / "a" / "ct_classification").metrics
    card = json.loads((tmp_path / "a" / "ct_classification" / "metadata.json").read_text())
    assert set(card["files"]) == {"model.onnx", "weights.npz", "calibration.json"}
    calibration = json.loads((tmp_path / "a" / "ct_classification" / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and 0.5 <= calibration["indeterminate_below"] <= 0.95
    report = card["metrics"]["calibration"]
    assert {"ece_heldout_slices_before", "ece_heldout_slices_after", "ece_heldout_studies_before",
            "ece_heldout_studies_after"} <= set(report)
    assert "normal_false_positive_rate" in card["metrics"]["heldout_sets"]["anatomy_normal_atrophic"]
    ct = registry.entries["ct_classification"].model
    assert ct.temperature == calibration["temperature"]

    # Same seed, same weights (the ONNX graph may differ in exporter-generated names, the weights may not).
    main(tmp_path / "b", seed=3, quick=True, models=["ct_classification"])
    assert (read_metadata(tmp_path / "b" / "ct_classification").files["weights.npz"]
            == read_metadata(tmp_path / "a" / "ct_classification").files["weights.npz"])


def test_unknown_model_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model ids"):
        main(tmp_path, models=["nope"])
    assert not any(tmp_path.iterdir())
