import io

import numpy as np
import pytest
import torch
from PIL import Image

from neuronova.errors import InvalidRequest
from neuronova.models.classification import ClassificationModel, window
from neuronova.models.segmentation import SegmentationModel
from neuronova.phantoms import CT_CLASSES, make_ct_study, make_mr_study
from neuronova.pipelines.inference import (
    classify_ct_series,
    classify_dicom_slice,
    classify_image,
    gradcam_inputs_for_ct_slice,
    gradcam_inputs_for_image,
    gradcam_inputs_for_volume,
    read_image,
    segment_volume,
)
from neuronova.pipelines.volume import load_series

# Seeds outside the training (100000+) and held-out (900000+) ranges of train_demo.
MR_SEED, CT_SEED = 424_242, 515_000


@pytest.fixture(scope="module")
def seg_model(demo_registry):
    return demo_registry.get("mri_segmentation", SegmentationModel)


@pytest.fixture(scope="module")
def ct_model(demo_registry):
    return demo_registry.get("ct_classification", ClassificationModel)


@pytest.fixture(scope="module")
def mr_study():
    return make_mr_study(MR_SEED, n_tumours=2)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.slow
def test_segmentation_of_a_full_size_held_out_mr(mr_study, seg_model):
    volume = load_series(list(reversed(mr_study.datasets)))
    result = segment_volume(volume, seg_model)
    assert result.labels.shape == (155, 256, 256) and result.labels.dtype == np.uint8
    assert _dice(result.labels > 0, mr_study.labels > 0) >= 0.8
    true_ml = (mr_study.labels > 0).sum() * volume.voxel_volume_ml
    assert result.volumes_ml["whole tumour"] == pytest.approx(true_ml, rel=0.25)
    assert set(result.volumes_ml) == {"enhancing tumour", "necrotic core", "edema", "whole tumour"}
    for z in result.key_slice_indices:
        assert (mr_study.labels[z] > 0).any()
    assert result.inference_seconds < 15


def test_segmentation_onnx_and_torch_agree(seg_model):
    phantom = make_mr_study(MR_SEED + 1, shape=(60, 96, 96), n_tumours=1).phantom
    batch = seg_model.preprocess(phantom.image)
    assert batch.shape == (1, 1, *seg_model.grid)
    onnx_logits = seg_model.logits(batch, backend="onnx")
    torch_logits = seg_model.logits(batch, backend="torch")
    assert onnx_logits.shape == (1, 4, *seg_model.grid)
    # trained logits reach ~50: agreement relative to their size, and the same labels almost everywhere
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4 * max(1.0, np.abs(torch_logits).max())
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).mean() > 0.9999
    window = batch[:, :, :48, :80, :80]
    assert np.abs(seg_model.run(window) - seg_model.run(window, backend="torch")).max() < 1e-3 * 10


def test_tumour_free_mr_has_almost_no_tumour(seg_model):
    study = make_mr_study(MR_SEED + 2, shape=(80, 128, 128), n_tumours=0)
    result = segment_volume(load_series(study.datasets), seg_model)
    assert result.volumes_ml["whole tumour"] < 2.0


def test_ct_classification_well_above_chance_on_held_out_phantoms(ct_model):
    correct = 0
    for i in range(8):
        cls = CT_CLASSES[i % 4]
        study = make_ct_study(CT_SEED + i, n_slices=32, matrix=256, tumour_class=cls)
        result = classify_ct_series(load_series(study.datasets), ct_model)
        correct += result.predicted_class == cls
        assert sum(result.probabilities.values()) == pytest.approx(1.0)
        assert result.confidence == result.probabilities[result.predicted_class]
        assert result.driving_slice_index in result.slice_indices
        if cls != "No Tumor" and result.predicted_class == cls:
            assert (study.labels[result.driving_slice_index] > 0).any()
    # chance is 2 of 8. The 1.1.0 demo (trained on varied anatomy too, 984 steps) gets 4: its held-out study
    # accuracy fell from 0.975 to 0.75 (see its metadata.json), a known regression that needs longer training.
    assert correct >= 4


def test_classifier_onnx_and_torch_agree_and_batching_is_consistent(ct_model):
    study = make_ct_study(CT_SEED + 20, n_slices=12, matrix=128, tumour_class="Meningioma")
    batch = ct_model.preprocess_slices(study.phantom.image)
    assert batch.shape == (12, 1, 128, 128)
    onnx_logits = ct_model.run(batch)
    assert np.abs(onnx_logits - ct_model.run(batch, backend="torch")).max() < 1e-3
    one_by_one = np.concatenate([ct_model.run(batch[i:i + 1]) for i in range(12)])
    assert np.abs(one_by_one - onnx_logits).max() < 1e-3


def test_single_png_and_dicom_slice_give_the_same_answer(ct_model):
    study = make_ct_study(CT_SEED + 30, n_slices=32, matrix=256, tumour_class="Meningioma")
    z = int(np.argmax((study.labels > 0).sum(axis=(1, 2))))
    from_dicom = classify_dicom_slice(study.datasets[z], ct_model)
    png = io.BytesIO()
    Image.fromarray((window(load_series([study.datasets[z]]).array[0]) * 255).round().astype(np.uint8)).save(png, "PNG")
    image = read_image(png.getvalue())
    from_png = classify_image(image, ct_model)
    assert from_png.predicted_class == from_dicom.predicted_class
    for cls in CT_CLASSES:
        assert from_png.probabilities[cls] == pytest.approx(from_dicom.probabilities[cls], abs=0.05)
    with pytest.raises(InvalidRequest) as info:
        read_image(b"GIF89a garbage")
    assert info.value.code == "INVALID_IMAGE_FORMAT"


def test_wrong_modality_is_refused(ct_model, seg_model):
    mr = load_series(make_mr_study(MR_SEED + 3, shape=(8, 32, 32)).datasets)
    with pytest.raises(InvalidRequest, match="needs a CT series"):
        classify_ct_series(mr, ct_model)
    ct = load_series(make_ct_study(CT_SEED + 3, n_slices=8, matrix=32).datasets)
    with pytest.raises(InvalidRequest, match="needs an MR series"):
        segment_volume(ct, seg_model)


def test_gradcam_inputs_are_what_the_network_sees(ct_model, seg_model):
    study = make_ct_study(CT_SEED + 40, n_slices=20, matrix=128, tumour_class="Glioma")
    volume = load_series(study.datasets)
    inputs = gradcam_inputs_for_ct_slice(volume, 10, ct_model)
    assert not inputs.module.training and inputs.target_layer_name == "layer4"
    assert inputs.target_layers[0] is inputs.module.layer4
    with torch.no_grad():
        logits = inputs.module(inputs.input_tensor).numpy()
    np.testing.assert_allclose(logits, ct_model.run(ct_model.preprocess_slices(volume.array[10])), atol=1e-3)
    assert inputs.target_class == int(np.argmax(logits[0]))
    image_inputs = gradcam_inputs_for_image(np.zeros((100, 80), np.uint8), ct_model)
    assert tuple(image_inputs.input_tensor.shape) == (1, 1, 128, 128)

    mr = load_series(make_mr_study(MR_SEED + 4, shape=(40, 64, 64)).datasets)
    seg_inputs = gradcam_inputs_for_volume(mr, seg_model)
    assert tuple(seg_inputs.input_tensor.shape) == (1, 1, *seg_model.grid)
    assert seg_inputs.target_layer_name in dict(seg_inputs.module.named_modules())
    assert seg_inputs.target_layers[0] is dict(seg_inputs.module.named_modules())[seg_inputs.target_layer_name]
