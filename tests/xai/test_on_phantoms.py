"""Explanations that point at the finding: the shipped demo models on synthetic heads whose lesion and air
are known voxel by voxel (the phantom's own tissue and label maps, not the node's body mask).

MR: the single-series pipeline end to end (segmentation, Grad-CAM of the written labels through the
inference's windows, SEG/SR/SC/Parametric Map); the map is read back from the Parametric Map it wrote.
CT: the classifier's Grad-CAM of the driving slice, as the CT pipeline computes it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuronova.config import Settings
from neuronova.jobs.model import Job
from neuronova.models.classification import ClassificationModel
from neuronova.models.registry import ModelRegistry
from neuronova.phantoms.dicom import make_ct_study, make_mr_study
from neuronova.phantoms.head import BACKGROUND
from neuronova.pipelines.inference import classify_ct_series, gradcam_inputs_for_ct_slice
from neuronova.pipelines.mri_segmentation import MriSegmentation
from neuronova.pipelines.registry import PipelineContext
from neuronova.pipelines.volume import load_series
from neuronova.store import InstanceStore
from neuronova.xai import explain_classification, heatmap_on_image, important_regions, resize_heatmap
from tests.conftest import dciodvfy_errors
from tests.jobs.helpers import encode

pytestmark = pytest.mark.slow

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def hottest_region(heat: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The connected region (heat >= threshold) holding the peak."""
    labels, _ = ndimage.label(heat >= threshold)
    return labels == labels[np.unravel_index(np.argmax(heat), heat.shape)]


@pytest.fixture(scope="module")
def mr_run(tmp_path_factory):
    """One run of the MRI pipeline on a phantom with one glioma (held out from the model's training)."""
    tmp = tmp_path_factory.mktemp("mri")
    study = make_mr_study(900003, shape=(80, 128, 128), n_tumours=1)
    store = InstanceStore(tmp / "data")
    try:
        for ds in study.datasets:
            store.put(encode(ds))
        pipeline = MriSegmentation()
        job = Job.new(study_uid=study.study_instance_uid, series_uid=study.series_instance_uid,
                      pipeline=pipeline.name, model_version=pipeline.version, input_fingerprint="x")
        # two shared cores under other tests' load: the explanation must not be cut by the default budget
        settings = Settings(data_dir=tmp / "data", xai_time_budget_seconds=900)
        result = pipeline(context=PipelineContext(job=job, store=store, settings=settings, progress=lambda _: None))
    finally:
        store.close()
    return study, result, tmp


def _map_volume(pmap, study) -> np.ndarray:
    """The Parametric Map's frames back in the study's slice order."""
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(study.datasets)}
    volume = np.full(study.labels.shape, np.nan, np.float32)
    for j, frame in enumerate(pmap.PerFrameFunctionalGroupsSequence):
        volume[index[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]] = (
            pmap.pixel_array[j])
    assert not np.isnan(volume).any()  # one frame per source slice
    return volume


def test_mri_map_is_hottest_on_the_lesion_and_zero_on_air(mr_run):
    study, result, _ = mr_run
    assert "error" not in result.summary["xai"] and result.summary["xai"]["parametric_map"] is True
    [pmap] = [ds for ds in result.datasets if ds.SOPClassUID == PARAMETRIC_MAP]
    cam = _map_volume(pmap, study)
    lesion = study.labels > 0
    air = study.phantom.tissue == BACKGROUND
    assert cam.max() == pytest.approx(1.0)
    assert not cam[air].any()  # no weight at all outside the head
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert lesion[peak]  # the hottest voxel is in the tumour
    hot = hottest_region(cam)
    assert (hot & lesion).sum() >= 0.5 * hot.sum()  # most of the hottest region is tumour
    assert cam[lesion].mean() > 3 * cam[~lesion & ~air].mean()


def test_mri_results_are_valid_and_the_overlays_show_heat_on_the_lesion(mr_run):
    study, result, tmp = mr_run
    overlays = [ds for ds in result.datasets if ds.SOPClassUID == SECONDARY_CAPTURE]
    assert overlays and all(ds.SeriesDescription == "AI Grad-CAM tumour - NOT FOR CLINICAL USE" for ds in overlays)
    [pmap] = [ds for ds in result.datasets if ds.SOPClassUID == PARAMETRIC_MAP]
    assert pmap.SeriesDescription == "AI Grad-CAM map - NOT FOR CLINICAL USE"
    assert len({ds.SeriesNumber for ds in result.datasets}) == len({ds.SeriesInstanceUID for ds in result.datasets})
    for k, ds in enumerate(result.datasets):
        path = tmp / f"result{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], (ds.SOPClassUID, path)
    # the overlay of the first key slice: colour on the tumour, the air untouched (grey, no tint)
    first = overlays[0]
    z = [ds.SOPInstanceUID for ds in study.datasets].index(first.SourceImageSequence[0].ReferencedSOPInstanceUID)
    rgb = first.pixel_array.astype(int)
    tinted = (np.abs(rgb[..., 0] - rgb[..., 2]) > 40) & ~((rgb[..., 0] == 255) & (rgb[..., 1] == 255))
    tinted[:20] = tinted[-20:] = False  # the burned-in texts
    lesion, air = study.labels[z] > 0, study.phantom.tissue[z] == BACKGROUND
    assert tinted.any() and not (tinted & air).any()
    assert (tinted & ndimage.binary_dilation(lesion, iterations=3)).sum() >= 0.5 * tinted.sum()


@pytest.fixture(scope="module")
def ct_model():
    return ModelRegistry.load(device="cpu", model_ids=("ct_classification",)).get("ct_classification",
                                                                                 ClassificationModel)


@pytest.mark.parametrize(("seed", "tumour_class"), [(7, "Glioma"), (8, "Meningioma")])
def test_ct_classifier_map_is_hottest_on_the_lesion_and_not_on_air(ct_model, seed, tumour_class):
    study = make_ct_study(seed, n_slices=30, matrix=256, tumour_class=tumour_class)
    volume = load_series(study.datasets)
    result = classify_ct_series(volume, ct_model)
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    # Explain the true class on the slice with the most lesion: what is tested is where the map points for a
    # class, whatever the (demo, mostly indeterminate) classifier decides for this study.
    z = int(np.argmax((study.labels > 0).reshape(len(study.labels), -1).sum(1)))
    lesion, air = study.labels[z] > 0, study.phantom.tissue[z] == BACKGROUND
    assert lesion.any()
    target = ct_model.classes.index(tumour_class)
    # what ct_classification does, unchanged: explain the driving slice, resize to the slice
    inputs = gradcam_inputs_for_ct_slice(volume, z, ct_model, target_class=target)
    explanation = explain_classification(inputs.module, inputs.target_layers[0], inputs.input_tensor,
                                         target_class=target)
    heat = resize_heatmap(explanation.heatmap, volume.array[z].shape)
    # the hottest region overlaps the lesion (the 1.1.0 demo classifier's 4x4 map is coarse: its single peak
    # pixel may lie beside the lesion, in the region that contains it)
    assert hottest_region(heat)[lesion].any()
    assert important_regions(heat)[0].importance == pytest.approx(1.0, abs=0.01)  # bilinear: just under 1
    # the body mask of the 128-pixel network input is up to a pixel off at the skin of the 256-pixel slice
    assert not heat[~ndimage.binary_dilation(~air, iterations=2)].any()
    # on the slice's own grid the restriction is exact
    exact = heatmap_on_image(explanation.heatmap, volume.array[z])
    assert not exact[air].any() and hottest_region(exact)[lesion].any()
    # without the restriction the same Grad-CAM lights up the air around the head
    unrestricted = explain_classification(inputs.module, inputs.target_layers[0], inputs.input_tensor,
                                          target_class=target, restrict_body=False)
    assert resize_heatmap(unrestricted.heatmap, volume.array[z].shape)[air].max() > 0.3

