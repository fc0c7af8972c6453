"""The shipped CT classifier on normal heads it never saw, and the ct_classification pipeline's indeterminate path.

Seeds here are outside every range train_demo uses (training 100000+/200000+, calibration 600000+, held-out
900000+), so these heads are new to the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neuronova.config import Settings
from neuronova.jobs.model import Job
from neuronova.models.classification import CALIBRATION_FILE, INDETERMINATE, ClassificationModel
from neuronova.models.metadata import read_metadata, sha256_file, write_metadata
from neuronova.models.registry import DEFAULT_MODEL_DIR, load_model
from neuronova.phantoms import CT_CLASSES, make_ct_phantom, phantom_to_datasets
from neuronova.phantoms.ct_anatomy import VARIANTS, make_ct_anatomy_phantom
from neuronova.pipelines.ct_classification import CtClassification
from neuronova.pipelines.registry import PipelineContext
from neuronova.store import InstanceStore
from tests.conftest import dciodvfy_errors
from tests.jobs.helpers import encode

SEED = 3_141_000
TUMOURS = CT_CLASSES[:3]


@pytest.fixture(scope="module")
def ct_model() -> ClassificationModel:
    entry = load_model(DEFAULT_MODEL_DIR / "ct_classification", device="cpu")
    assert entry.model is not None, entry.error
    return entry.model  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_normal_heads_of_every_variant_are_never_called_tumour(ct_model, variant):
    for i in range(2):
        phantom = make_ct_anatomy_phantom(SEED + 100 * VARIANTS.index(variant) + i, matrix=256, variant=variant)
        result = ct_model.classify_volume(phantom.image, pixel_area_mm2=phantom.spacing[1] * phantom.spacing[2])
        assert result.outcome not in TUMOURS, (variant, i, result.probabilities)


@pytest.mark.slow
def test_normal_procedural_heads_at_other_matrix_and_spacing_are_never_called_tumour(ct_model):
    for i, (shape, spacing) in enumerate((((40, 512, 512), None), ((60, 256, 256), (2.5, 0.9, 0.9)))):
        phantom = make_ct_phantom(SEED + 1000 + i, shape=shape, spacing=spacing, tumour_class="No Tumor")
        result = ct_model.classify_volume(phantom.image, pixel_area_mm2=phantom.spacing[1] * phantom.spacing[2])
        assert result.outcome not in TUMOURS, (shape, result.probabilities)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known regression of the 1.1.0 demo weights: training cut to 984 steps "
                   "misses tumours on varied anatomy (held-out tumour outcome accuracy 0.17, a glioma called No Tumor)")
def test_tumours_on_varied_anatomy_are_still_found(ct_model):
    outcomes = []
    for c, cls in enumerate(TUMOURS):
        for i in range(2):
            phantom = make_ct_anatomy_phantom(SEED + 2000 + 10 * c + i, matrix=256, tumour_class=cls)
            result = ct_model.classify_volume(phantom.image, pixel_area_mm2=phantom.spacing[1] * phantom.spacing[2])
            outcomes.append((cls, result.outcome))
            assert result.outcome != "No Tumor", (cls, result.probabilities)  # missed: neither found nor unsure
    assert sum(cls == outcome for cls, outcome in outcomes) >= 4, outcomes


def _run_pipeline(tmp_path: Path, model_dir: Path | None, phantom) -> tuple[dict, list]:
    datasets = phantom_to_datasets(phantom)
    store = InstanceStore(tmp_path / "data")
    try:
        for ds in datasets:
            store.put(encode(ds))
        pipeline = CtClassification(model_dir=model_dir) if model_dir else CtClassification()
        job = Job.new(study_uid=datasets[0].StudyInstanceUID, series_uid=datasets[0].SeriesInstanceUID,
                      pipeline=pipeline.name, model_version=pipeline.version, input_fingerprint="x")
        settings = Settings(data_dir=tmp_path, **({"model_dir": model_dir} if model_dir else {}))
        result = pipeline(context=PipelineContext(job=job, store=store, settings=settings, progress=lambda _: None))
    finally:
        store.close()
    return result.summary, result.datasets


def _valid(tmp_path: Path, datasets: list) -> None:
    for k, ds in enumerate(datasets):
        path = tmp_path / f"out{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], path


@pytest.mark.slow
def test_pipeline_reports_outcome_and_calibration_for_a_normal_head(tmp_path):
    phantom = make_ct_anatomy_phantom(SEED + 3000, matrix=128, n_slices=24, variant="calcified")
    summary, datasets = _run_pipeline(tmp_path, None, phantom)
    assert summary["outcome"] not in TUMOURS
    assert summary["indeterminate"] == (summary["outcome"] == INDETERMINATE)
    assert summary["indeterminate"] == (summary["confidence"] < summary["calibration"]["indeterminate_below"])
    assert summary["predicted_class"] == max(summary["probabilities"], key=summary["probabilities"].get)
    assert summary["calibration"]["temperature"] > 0
    _valid(tmp_path, datasets)


@pytest.mark.slow
def test_pipeline_writes_an_indeterminate_finding_below_the_threshold(tmp_path):
    model_dir = tmp_path / "models"
    shutil.copytree(DEFAULT_MODEL_DIR / "ct_classification", model_dir / "ct_classification")
    path = model_dir / "ct_classification" / CALIBRATION_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "indeterminate_below": 0.999}))
    metadata = read_metadata(model_dir / "ct_classification")
    metadata.files[CALIBRATION_FILE] = sha256_file(path)
    write_metadata(model_dir / "ct_classification", metadata)

    phantom = make_ct_anatomy_phantom(SEED + 3001, matrix=128, n_slices=24, tumour_class="Meningioma")
    summary, datasets = _run_pipeline(tmp_path, model_dir, phantom)
    assert summary["confidence"] < 0.999
    assert summary["outcome"] == INDETERMINATE and summary["indeterminate"] is True
    assert summary["predicted_class"] in CT_CLASSES
    _valid(tmp_path, datasets)
    sr = next(ds for ds in datasets if ds.Modality == "SR")
    assert "Indeterminate" in str(sr)  # the finding's code meaning
